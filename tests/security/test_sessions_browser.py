"""Dashboard sessions over HTTP: cookie flags, CSRF signed double-submit on state changes, server
side revocation, CORS allowlist (no `*`, no reflection)."""

from __future__ import annotations

import pytest

from starlette.requests import Request

from opsgate.security.web_security import checked_origins
from tests.gateways import gateway_settings, running_gateway
from tests.security.credentials import add_login

PASSWORD = "correct horse battery staple"
ORIGIN = "https://dash.example.test"


@pytest.fixture
def gw(tmp_path):
    with running_gateway(gateway_settings(tmp_path, session_cookie_secure=False, cors_origins=[ORIGIN])) as gateway:
        add_login(gateway, "ada", "admin", PASSWORD)
        yield gateway


def _session(gw, csrf=None):
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    response = gw.client.post("/v1/auth/session", data={"username": "ada", "password": PASSWORD}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_session_cookies_are_httponly_samesite_and_signed(gw, tmp_path):
    response = _session(gw)
    cookies = {c.split("=", 1)[0]: c for c in response.headers.get_list("set-cookie")}
    session = cookies["opsgate_session"]
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
    assert "HttpOnly" not in cookies["opsgate_csrf"]
    assert response.json()["csrf_token"] == gw.client.cookies["opsgate_csrf"]
    (tmp_path / "secure").mkdir()
    with running_gateway(gateway_settings(tmp_path / "secure")) as secure:
        add_login(secure, "ada", "user", PASSWORD)
        flags = secure.client.post("/v1/auth/session", data={"username": "ada", "password": PASSWORD}).headers.get_list("set-cookie")
        assert any(c.startswith("__Host-opsgate_session=") and "Secure" in c for c in flags)


def test_state_changes_with_a_session_need_the_csrf_token(gw):
    csrf = _session(gw).json()["csrf_token"]
    missing = gw.client.post("/v1/auth/session/logout")
    assert missing.status_code == 403 and missing.json()["code"] == "csrf_failed"
    forged = gw.client.post("/v1/auth/session/logout", headers={"X-CSRF-Token": csrf[:-2] + "AA"})
    assert forged.status_code == 403
    gw.client.cookies.set("opsgate_csrf", "x.y")
    mismatch = gw.client.post("/v1/auth/session/logout", headers={"X-CSRF-Token": "x.y"})
    assert mismatch.status_code == 403  # equal but not signed for this session
    gw.client.cookies.set("opsgate_csrf", csrf)
    by_form = gw.client.post("/v1/auth/session/logout", data={"csrf_token": csrf})
    assert by_form.status_code == 204


def test_a_token_from_another_session_is_refused_and_logout_revokes_on_the_server(gw):
    first_cookie_csrf = _session(gw).json()["csrf_token"]
    stolen = gw.client.cookies["opsgate_session"]
    assert gw.client.post("/v1/auth/session", data={"username": "ada", "password": PASSWORD}).status_code == 403
    second = _session(gw, csrf=first_cookie_csrf).json()["csrf_token"]
    crossed = gw.client.post("/v1/auth/session/logout", headers={"X-CSRF-Token": first_cookie_csrf},
                             cookies={"opsgate_csrf": first_cookie_csrf})
    assert crossed.status_code == 403
    assert gw.client.post("/v1/auth/session/logout", headers={"X-CSRF-Token": second}).status_code == 204
    gw.client.cookies.set("opsgate_session", stolen)
    manager = gw.runtime.security.sessions
    scope = {"type": "http", "headers": [(b"cookie", f"opsgate_session={stolen}".encode())]}
    assert manager.read(Request(scope)) is not None  # the first login is still live
    gw.client.post("/v1/auth/session/logout", headers={"X-CSRF-Token": first_cookie_csrf},
                   cookies={"opsgate_csrf": first_cookie_csrf, "opsgate_session": stolen})
    assert manager.read(Request(scope)) is None  # revoked on the server: the cookie is dead


def test_cors_allows_only_the_listed_origin_without_reflection(gw):
    allowed = gw.client.options("/v1/auth/token", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert allowed.headers["access-control-allow-credentials"] == "true"
    evil = gw.client.options("/v1/auth/token", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in evil.headers
    simple = gw.client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


@pytest.mark.parametrize("bad", ["*", "https://*.example.com", "null", "https://a.example/path", "example.com",
                                 "https://user@a.example", "ftp://a.example"])
def test_unsafe_cors_origins_are_refused_at_start(bad):
    with pytest.raises(ValueError, match="exact"):
        checked_origins([bad])


def test_operation_routes_served_ahead_of_the_stack_keep_its_headers_csrf_and_cors(gw, monkeypatch):
    """``app.OperationRoutes`` serves the operations ahead of Starlette's middleware stack, through
    the app's own middlewares: a live session still needs its CSRF token there, and an unexpected
    failure is the 500 problem with the security headers and, for an allowed Origin, the CORS
    answer (the stack's ServerErrorMiddleware sent it outside both: the old code fails here)."""

    async def broken(call):
        raise RuntimeError("a bug in the pipeline")

    monkeypatch.setattr(gw.runtime.gateway, "govern", broken)
    bearer = {"Authorization": f"Bearer {gw.token()}"}
    _session(gw)
    refused = gw.client.post("/v1/operations/email-classify", json={}, headers=bearer)
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
    assert refused.headers["x-frame-options"] == "DENY"
    gw.client.cookies.clear()  # no session: the call reaches the pipeline
    bug = gw.client.post("/v1/operations/email-classify", json={}, headers={**bearer, "Origin": ORIGIN})
    assert bug.status_code == 500 and bug.headers["content-type"] == "application/problem+json"
    assert bug.json()["code"] == "internal_error" and bug.headers["x-request-id"] == bug.json()["request_id"]
    assert bug.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in bug.headers["content-security-policy"]
    assert bug.headers["access-control-allow-origin"] == ORIGIN
