"""Changes from the dashboard in real Chromium: an admin promotes and rolls back a rollout (the state
changes and the ledger entry appears), an operator acknowledges and resolves an incident, and an
operator cannot change rollouts even with a valid CSRF token."""

from __future__ import annotations

import httpx
import orjson
from playwright.sync_api import Browser
from tests.security.canaries import KEYS
from tests.web.browsing import Console, Dashboard, screenshot, sign_in, wait_live

from opsgate.monitoring.rules import Finding, Severity


def _start_rollout(dashboard: Dashboard, operation: str) -> dict:
    return dashboard.api("/v1/admin/rollouts", user="ada", method="POST",
                         json={"operations": [operation]})


def _rollout(dashboard: Dashboard, rollout_id: int) -> dict:
    return next(r for r in dashboard.api("/v1/admin/rollouts", user="ada")["rollouts"] if r["id"] == rollout_id)


def test_admin_promotes_then_rolls_back(dashboard: Dashboard, browser: Browser) -> None:
    console = Console()
    rollout = _start_rollout(dashboard, "email-compose")
    page = sign_in(browser, dashboard, "ada", console)
    page.goto("/dashboard/rollouts")
    card = page.locator(f"#rollout-{rollout['id']}")
    assert card.locator(".percentage").inner_text() == "5"
    screenshot(page, "rollouts-admin")

    card.locator("button.promote").click()
    page.wait_for_url("**/dashboard/rollouts")
    promoted = _rollout(dashboard, rollout["id"])
    assert (promoted["stage_index"], promoted["percentage"]) == (1, 25)
    assert page.locator(f"#rollout-{rollout['id']} .percentage").inner_text() == "25"

    card = page.locator(f"#rollout-{rollout['id']}")
    card.locator("input[name=reason]").fill("dashboard test: bad answers")
    card.locator("button.rollback").click()
    page.wait_for_url("**/dashboard/rollouts")
    rolled = _rollout(dashboard, rollout["id"])
    assert rolled["state"] == "rolling_back"
    assert rolled["reason"] == "dashboard test: bad answers"
    card = page.locator(f"#rollout-{rollout['id']}")
    assert card.locator(".state").inner_text() == "rolling_back"
    assert card.locator("button.rollback").count() == 0
    assert "dashboard test: bad answers" in card.locator("table.history tbody tr").first.inner_text()
    screenshot(page, "rollouts-rolled-back")

    page.goto("/dashboard/ledger")
    wait_live(page)
    recent = page.locator("#ledger-recent tbody tr").all_inner_texts()
    decisions = [r for r in recent if "\trollout.decision\tada" in r]
    assert decisions, recent
    toggle = dashboard.api("/v1/admin/toggles/email-compose", user="ada")
    assert toggle["enabled"] is False
    screenshot(page, "ledger-after-rollback")
    assert console.errors == []
    page.context.close()


def test_a_refused_change_says_why(dashboard: Dashboard, browser: Browser) -> None:
    console = Console()
    page = sign_in(browser, dashboard, "ada", console)
    page.goto("/dashboard/rollouts")
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "opsgate_csrf")
    before = _rollout(dashboard, 1)
    response = page.request.post("/dashboard/rollouts/1/promote", form={"csrf_token": csrf})
    assert response.url.endswith("/dashboard/rollouts?error=rollout_conflict")
    assert "The change was refused: <code>rollout_conflict</code>" in response.text()
    assert _rollout(dashboard, 1) == before
    page.context.close()


def test_an_operator_cannot_change_rollouts(dashboard: Dashboard, browser: Browser) -> None:
    console = Console()
    rollout = _start_rollout(dashboard, "task-breakdown")
    page = sign_in(browser, dashboard, "oscar", console)
    page.goto("/dashboard/rollouts")
    assert page.locator("button.promote").count() == 0
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "opsgate_csrf")
    for action in ("promote", "rollback"):
        response = page.request.post(f"/dashboard/rollouts/{rollout['id']}/{action}",
                                     form={"csrf_token": csrf, "reason": "not mine to decide"})
        assert response.status == 403
    assert _rollout(dashboard, rollout["id"])["stage_index"] == 0
    assert _rollout(dashboard, rollout["id"])["state"] == "running"
    page.context.close()


def test_operator_acknowledges_and_resolves_an_incident(dashboard: Dashboard, browser: Browser) -> None:
    finding = Finding("error_rate", {"operation": "email-classify"}, True, Severity.P2, "2.50",
                      "Error rate of email-classify at 2.50 %", "2.50 % of calls failed over 5 minutes")
    incident_id = dashboard.runtime.incidents.open(finding, 1)
    assert incident_id is not None
    console = Console()
    page = sign_in(browser, dashboard, "oscar", console)
    page.goto(f"/dashboard/incidents/{incident_id}")
    page.click("button.ack")
    page.wait_for_url(f"**/dashboard/incidents/{incident_id}")
    shown = dashboard.api(f"/v1/incidents/{incident_id}")
    assert (shown["state"], shown["acknowledged_by"]) == ("acknowledged", "oscar")
    assert page.locator("#incident .state").inner_text() == "acknowledged"

    page.fill("input[name=note]", "retried the failed calls; provider fixed")
    page.click("button.resolve")
    page.wait_for_url(f"**/dashboard/incidents/{incident_id}")
    shown = dashboard.api(f"/v1/incidents/{incident_id}")
    assert (shown["state"], shown["resolution_note"]) == ("resolved", "retried the failed calls; provider fixed")
    assert page.locator("#incident .state").inner_text() == "resolved"
    assert [e["kind"] for e in shown["timeline"]][-2:] == ["acknowledged", "resolved"]
    assert page.locator("#timeline li").count() == len(shown["timeline"])
    screenshot(page, "incident-resolved")
    assert console.errors == []
    page.context.close()


def test_a_rollback_reason_from_the_dashboard_is_stored_redacted_and_a_nul_is_refused(dashboard: Dashboard) -> None:
    key = KEYS["anthropic_api_key"]
    rollout = _start_rollout(dashboard, "analytics-anomaly")
    form = {"username": "ada", "password": dashboard.passwords["ada"]}
    with httpx.Client(base_url=dashboard.base_url) as client:
        assert client.post("/dashboard/login", data=form, follow_redirects=False).status_code == 303
        client.get("/dashboard/rollouts")
        csrf = client.cookies["opsgate_csrf"]
        path = f"/dashboard/rollouts/{rollout['id']}/rollback"
        refused = client.post(path, data={"csrf_token": csrf, "reason": "bad\x00key"}, follow_redirects=False)
        assert refused.headers["location"] == "/dashboard/rollouts?error=invalid_input"
        assert _rollout(dashboard, rollout["id"])["state"] == "running"
        done = client.post(path, data={"csrf_token": csrf, "reason": f"bad key {key}"}, follow_redirects=False)
        assert done.headers["location"] == "/dashboard/rollouts"
    rolled_back = _rollout(dashboard, rollout["id"])
    # [REDACTED:anthropic:…] by its shape, or [REDACTED:secret:…] when the sanitizer holds the
    # gateway's own configured key (the dashboard fixture configures this one): redacted either way
    assert rolled_back["history"][-1]["reason"].startswith("bad key [REDACTED:")
    assert key not in rolled_back["history"][-1]["reason"]
    assert key not in orjson.dumps(rolled_back).decode()
