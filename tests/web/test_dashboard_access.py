"""No dashboard page or figure without a signed-in operator or admin session."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Browser
from tests.web.browsing import Console, Dashboard, screenshot, sign_in

PAGES = ["/dashboard", "/dashboard/metrics", "/dashboard/providers", "/dashboard/costs", "/dashboard/adoption",
         "/dashboard/rollouts", "/dashboard/incidents", "/dashboard/ledger", "/dashboard/incidents/inc-000000000000"]
DATA = ["/dashboard/data/overview", "/dashboard/data/series", "/dashboard/data/providers", "/dashboard/data/costs",
        "/dashboard/data/adoption", "/dashboard/data/rollouts", "/dashboard/data/incidents", "/dashboard/data/ledger"]
ACTIONS = ["/dashboard/rollouts/1/promote", "/dashboard/rollouts/1/rollback",
           "/dashboard/incidents/inc-000000000000/ack", "/dashboard/incidents/inc-000000000000/resolve"]


@pytest.mark.parametrize("path", PAGES)
def test_a_page_without_a_session_redirects_to_sign_in(dashboard: Dashboard, path: str) -> None:
    bearer = {"Authorization": f"Bearer {dashboard.token('ada')}"}
    for headers in ({}, bearer):  # an API token is no dashboard session
        response = dashboard.client.get(path, headers=headers, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/dashboard/login?next=%2Fdashboard")


@pytest.mark.parametrize("path", DATA)
def test_figures_without_a_session_are_401(dashboard: Dashboard, path: str) -> None:
    response = dashboard.client.get(path, headers={"Authorization": f"Bearer {dashboard.token('ada')}"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


@pytest.mark.parametrize("path", ACTIONS)
def test_changes_without_a_session_change_nothing(dashboard: Dashboard, path: str) -> None:
    before = dashboard.api("/v1/admin/rollouts", user="ada")
    response = dashboard.client.post(path, data={"reason": "x", "note": "x"}, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/dashboard/login")
    assert dashboard.api("/v1/admin/rollouts", user="ada") == before


def test_role_user_cannot_sign_in_and_sees_nothing(dashboard: Dashboard, browser: Browser) -> None:
    console = Console()
    page = sign_in(browser, dashboard, "ursula", console)
    assert page.locator("#login-error").inner_text() == "This account has no access to the dashboard."
    assert page.context.cookies() == []
    screenshot(page, "login-refused")
    page.context.close()
    # a session obtained through the API still opens no page and no figure
    form = {"username": "ursula", "password": dashboard.passwords["ursula"]}
    with httpx.Client(base_url=dashboard.base_url) as client:
        assert client.post("/v1/auth/session", data=form).status_code == 200
        for path in PAGES[:-1]:
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 403
            assert "The dashboard is for operators and admins" in response.text
            assert "<table" not in response.text
        for path in DATA:
            assert client.get(path).json()["code"] == "forbidden"


def test_wrong_password_is_refused(dashboard: Dashboard) -> None:
    response = dashboard.client.post("/dashboard/login", data={"username": "oscar", "password": "wrong-password"})
    assert response.status_code == 401
    assert "Wrong user name or password." in response.text
    assert "set-cookie" not in response.headers


def test_sign_in_never_redirects_off_the_dashboard(dashboard: Dashboard) -> None:
    form = {"username": "oscar", "password": dashboard.passwords["oscar"], "next": "https://evil.example/"}
    with httpx.Client(base_url=dashboard.base_url) as client:
        response = client.post("/dashboard/login", data=form, follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/dashboard")


def test_a_form_without_the_csrf_token_is_refused(dashboard: Dashboard) -> None:
    form = {"username": "ada", "password": dashboard.passwords["ada"]}
    with httpx.Client(base_url=dashboard.base_url) as client:
        assert client.post("/dashboard/login", data=form, follow_redirects=False).status_code == 303
        before = dashboard.api("/v1/admin/rollouts", user="ada")
        response = client.post("/dashboard/rollouts/1/rollback", data={"reason": "forged"})
        assert response.status_code == 403
        assert response.json()["code"] == "csrf_failed"
        assert dashboard.api("/v1/admin/rollouts", user="ada") == before


def test_sign_out_ends_the_session(dashboard: Dashboard, browser: Browser) -> None:
    console = Console()
    page = sign_in(browser, dashboard, "oscar", console)
    assert page.url.endswith("/dashboard")
    page.click("text=Sign out")
    page.wait_for_url("**/dashboard/login")
    page.goto("/dashboard/ledger")
    assert "/dashboard/login?next=" in page.url
    assert console.errors == []
    page.context.close()
