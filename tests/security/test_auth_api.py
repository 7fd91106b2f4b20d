"""The token endpoints over real HTTP: password grant, refresh rotation and reuse, logout, admin
role changes, and no echo of submitted passwords."""

from __future__ import annotations

import jwt
import pytest
from sqlalchemy import select

from opsgate.security.models import users
from tests.gateways import gateway_settings, running_gateway
from tests.security.credentials import add_login

PASSWORD = "correct horse battery staple"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def gw(tmp_path):
    with running_gateway(gateway_settings(tmp_path)) as gateway:
        add_login(gateway, "ada", "user", PASSWORD, email="Ada@Example.org")
        add_login(gateway, "root", "admin", PASSWORD + "!")
        yield gateway


def _oauth_error(response, error):
    """An RFC 6749 §5.2 error: 400, JSON ``{"error", "error_description"}``, not cached."""
    assert (response.status_code, response.headers["content-type"]) == (400, "application/json"), response.text
    assert response.headers["cache-control"] == "no-store" and response.headers["x-request-id"]
    body = response.json()
    assert set(body) == {"error", "error_description"} and body["error"] == error, body
    return body["error_description"]


def _login(gw, username="ada", password=PASSWORD):
    return gw.client.post("/v1/auth/token", data={"grant_type": "password", "username": username, "password": password})


def test_password_grant_answers_rfc6749_tokens(gw):
    response = _login(gw)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["refresh_token"].startswith("ogr_")
    assert response.headers["cache-control"] == "no-store"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "ada" and claims["role"] == "user"
    assert gw.runtime.tokens.verify(body["access_token"]).user_id == "ada"


def test_login_by_email_and_the_stored_hash_is_argon2id(gw):
    assert _login(gw, username="ADA@example.org").json()["access_token"]
    with gw.runtime.engine.connect() as conn:
        stored = conn.execute(select(users.c.password_hash).where(users.c.user_id == "ada")).scalar()
    assert stored.startswith("$argon2id$v=19$") and PASSWORD not in stored


@pytest.mark.parametrize("username,password", [("ada", "wrong password 1"), ("nobody", PASSWORD),
                                               ("nobody@example.org", PASSWORD)])
def test_wrong_password_and_unknown_user_get_the_same_invalid_grant(gw, username, password):
    response = _login(gw, username, password)
    assert _oauth_error(response, "invalid_grant") == "Unknown user or wrong password"
    assert password not in response.text


def test_validation_errors_do_not_echo_the_password(gw):
    secret = "hunter2-secret-" + "x" * 1100
    response = gw.client.post("/v1/auth/token", data={"grant_type": "password", "username": "ada", "password": secret})
    assert _oauth_error(response, "invalid_request") == (
        "The request body does not match the expected shape: [password] String should have at most 1024 characters")
    assert "hunter2" not in response.text
    as_json = gw.client.post("/v1/auth/token", json={"grant_type": "password", "username": "ada", "password": "hunter2"})
    assert _oauth_error(as_json, "invalid_request") == "The body must be application/x-www-form-urlencoded in UTF-8"
    assert "hunter2" not in as_json.text


@pytest.mark.parametrize("url", ["/v1/auth/token", "/v1/auth/refresh"])
def test_token_endpoint_errors_follow_rfc6749_section_5_2(gw, url):
    """Tester A F4: a wrong grant type was a 422 problem and a wrong password a 401 problem, which
    OAuth client libraries do not read; a Latin-1 form was decoded as UTF-8 and accepted."""
    post = gw.client.post
    assert _oauth_error(post(url, data={"username": "ada", "password": PASSWORD}), "invalid_request") == (
        "grant_type is required")
    other = post(url, data={"grant_type": "client_credentials", "username": "ada", "password": PASSWORD})
    assert "grant_type must be " in _oauth_error(other, "unsupported_grant_type")
    assert "client_credentials" not in other.text
    missing = post(url, data={"grant_type": "refresh_token"})
    assert "[refresh_token] Field required" in _oauth_error(missing, "invalid_request")
    unknown = post(url, data={"grant_type": "refresh_token", "refresh_token": "ogr_" + "A" * 43})
    assert _oauth_error(unknown, "invalid_grant") == "The refresh token is not valid"
    refresh = _login(gw).json()["refresh_token"]
    for charset in ("latin1", "ISO-8859-1", '"windows-1252"'):
        latin = post(url, content=f"grant_type=refresh_token&refresh_token={refresh}".encode(),
                     headers={"Content-Type": f"application/x-www-form-urlencoded; charset={charset}"})
        assert _oauth_error(latin, "invalid_request") == "The body must be application/x-www-form-urlencoded in UTF-8"
    utf8 = post(url, content=f"grant_type=refresh_token&refresh_token={refresh}".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"})
    assert utf8.status_code == 200, utf8.text


def test_the_token_endpoint_takes_the_refresh_grant_as_rfc6749_section_6_says(gw):
    first = _login(gw).json()["refresh_token"]
    rotated = gw.client.post("/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": first})
    assert rotated.status_code == 200 and rotated.json()["refresh_token"] not in ("", first)
    assert rotated.headers["cache-control"] == "no-store"
    assert gw.runtime.tokens.verify(rotated.json()["access_token"]).user_id == "ada"


def test_a_form_in_another_charset_is_refused_by_the_sign_in_routes_too(gw):
    latin = gw.client.post("/v1/auth/session", content=f"username=ada&password={PASSWORD}".encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded; charset=latin1"})
    assert (latin.status_code, latin.json()["code"]) == (415, "unsupported_media_type")


def test_refresh_rotates_and_reuse_revokes_the_family_over_http(gw):
    first = _login(gw).json()["refresh_token"]
    grant = {"grant_type": "refresh_token"}
    second = gw.client.post("/v1/auth/refresh", data={**grant, "refresh_token": first})
    assert second.status_code == 200 and second.json()["refresh_token"] != first
    _age_rotation(gw, seconds=11)  # the gateway runs on the system clock: age the rotation instead
    reuse = gw.client.post("/v1/auth/refresh", data={**grant, "refresh_token": first})
    assert "already used" in _oauth_error(reuse, "invalid_grant")
    victim = gw.client.post("/v1/auth/refresh", data={**grant, "refresh_token": second.json()["refresh_token"]})
    _oauth_error(victim, "invalid_grant")


def _age_rotation(gw, seconds: float) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from opsgate.security.models import refresh_tokens

    with gw.runtime.engine.begin() as conn:
        for token_hash, rotated_at in conn.execute(
            select(refresh_tokens.c.token_hash, refresh_tokens.c.rotated_at).where(refresh_tokens.c.rotated_at.is_not(None))
        ).all():
            conn.execute(update(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash)
                         .values(rotated_at=rotated_at - timedelta(seconds=seconds)))


def test_logout_revokes_the_refresh_token(gw):
    refresh = _login(gw).json()["refresh_token"]
    assert gw.client.post("/v1/auth/logout", data={"refresh_token": refresh}).status_code == 204
    again = gw.client.post("/v1/auth/refresh", data={"grant_type": "refresh_token", "refresh_token": refresh})
    _oauth_error(again, "invalid_grant")


def test_only_admins_change_roles_and_the_change_is_ledgered_and_revokes_logins(gw):
    user_access = _login(gw).json()["access_token"]
    denied = gw.client.put("/v1/admin/users/ada", json={"role": "admin"}, headers={"Authorization": f"Bearer {user_access}"})
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
    refresh = _login(gw).json()["refresh_token"]
    admin = _login(gw, "root", PASSWORD + "!").json()["access_token"]
    auth = {"Authorization": f"Bearer {admin}"}
    changed = gw.client.put("/v1/admin/users/ada", json={"role": "operator"}, headers=auth)
    assert changed.status_code == 200 and changed.json() == {"user_id": "ada", "role": "operator"}
    assert gw.client.post("/v1/auth/refresh", data={"grant_type": "refresh_token", "refresh_token": refresh}).status_code == 400
    assert jwt.decode(_login(gw).json()["access_token"], options={"verify_signature": False})["role"] == "operator"
    assert gw.client.put("/v1/admin/users/nobody", json={"role": "user"}, headers=auth).status_code == 404
    assert gw.client.put("/v1/admin/users/ada", json={"role": "root"}, headers=auth).status_code == 422
    for bad in ("x" * 129, "%20%20", "al%01ice"):  # a 129-character id was a 500 (ValueError)
        refused = gw.client.put(f"/v1/admin/users/{bad}", json={"role": "user"}, headers=auth)
        assert (refused.status_code, refused.json()["code"]) == (422, "invalid_input"), bad
    from opsgate.ledger.entry import decode_body
    from opsgate.store.models import ledger_entries

    with gw.runtime.engine.connect() as conn:
        bodies = [decode_body(b) for (b,) in conn.execute(select(ledger_entries.c.body))]
    role_sets = [b for b in bodies if b["kind"] == "user.role_set"]
    assert [(b["user_id"], b["role"], b["actor"], b["before"]) for b in role_sets] == [
        ("ada", "operator", "root", "user")]  # the 404 and the 422 wrote nothing


def _role_sets(gw):
    from opsgate.ledger.entry import decode_body
    from opsgate.store.models import ledger_entries

    with gw.runtime.engine.connect() as conn:
        bodies = [decode_body(b) for (b,) in conn.execute(select(ledger_entries.c.body))]
    return [(b["user_id"], b["role"], b["before"], b["actor"]) for b in bodies if b["kind"] == "user.role_set"]


def test_a_demoted_admins_access_token_loses_admin_at_the_next_request(gw):
    add_login(gw, "dave", "user", PASSWORD)
    root = {"Authorization": f"Bearer {_login(gw, 'root', PASSWORD + '!').json()['access_token']}"}
    assert gw.client.put("/v1/admin/users/dave", json={"role": "admin"}, headers=root).status_code == 200
    login = {"Authorization": f"Bearer {_login(gw, 'dave').json()['access_token']}"}
    dave = {"Authorization": f"Bearer {gw.runtime.tokens.issue('dave', 'admin')}"}  # of no login (`opsgate token`)
    assert gw.client.get("/v1/admin/budgets", headers=login).status_code == 200
    assert gw.client.get("/v1/admin/budgets", headers=dave).status_code == 200
    assert gw.client.put("/v1/admin/users/dave", json={"role": "user"}, headers=root).status_code == 200
    assert gw.client.get("/v1/admin/budgets", headers=login).status_code == 401  # the role change ended the login
    assert gw.client.get("/v1/admin/budgets", headers=dave).status_code == 403  # the same, unexpired token
    again = gw.client.put("/v1/admin/users/dave", json={"role": "admin"}, headers=dave)
    assert (again.status_code, again.json()["code"]) == (403, "forbidden")
    assert gw.client.post("/v1/operations/email-classify", json={}, headers=dave).status_code != 401  # still a user
    assert _role_sets(gw) == [("dave", "admin", "user", "root"), ("dave", "user", "admin", "root")]


def test_a_role_change_in_another_process_applies_to_tokens_issued_before_it(gw):
    from opsgate.security.users import set_role

    add_login(gw, "olga", "operator", PASSWORD)
    olga = {"Authorization": f"Bearer {gw.runtime.tokens.issue('olga', 'operator')}"}  # of no login: capped, not revoked
    assert gw.client.get("/v1/health", headers=olga).status_code == 200
    set_role(gw.runtime.ledger, gw.runtime.security.refresh, "olga", "user", "cli:ops")  # e.g. the CLI
    assert gw.client.get("/v1/health", headers=olga).status_code == 403
    promoted_token = {"Authorization": f"Bearer {gw.runtime.tokens.issue('ada', 'user')}"}
    set_role(gw.runtime.ledger, gw.runtime.security.refresh, "ada", "admin", "cli:ops")
    assert gw.client.get("/v1/admin/budgets", headers=promoted_token).status_code == 403  # a promotion needs a new token
    assert _role_sets(gw) == [("olga", "user", "operator", "cli:ops"), ("ada", "admin", "user", "cli:ops")]


def test_nobody_changes_their_own_role(gw):
    root = {"Authorization": f"Bearer {_login(gw, 'root', PASSWORD + '!').json()['access_token']}"}
    refused = gw.client.put("/v1/admin/users/root", json={"role": "user"}, headers=root)
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    with gw.runtime.engine.connect() as conn:
        assert conn.execute(select(users.c.role).where(users.c.user_id == "root")).scalar() == "admin"
    assert _role_sets(gw) == []


def test_an_unknown_user_is_not_ledgered(gw):
    root = {"Authorization": f"Bearer {_login(gw, 'root', PASSWORD + '!').json()['access_token']}"}
    assert gw.client.put("/v1/admin/users/nobody", json={"role": "admin"}, headers=root).status_code == 404
    assert _role_sets(gw) == []


def test_security_headers_on_every_response(gw):
    for response in (gw.client.get("/healthz"), _login(gw, "x", "y" * 12), gw.client.get("/nowhere")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"


def test_a_local_admin_token_for_a_user_with_no_row_is_only_a_user(gw):
    """Tester A F5: a locally signed ``{"sub": "ghost-admin", "role": "admin"}`` got 200 on admin
    routes, and could be neither demoted nor revoked (``PUT /v1/admin/users/ghost-admin`` is 404).
    opsgate issues local tokens only for existing users, so a row-less one is capped at ``user``."""
    from opsgate.clock import SystemClock
    from opsgate.security.auth import TokenService

    ghost = {"Authorization": f"Bearer {TokenService(gw.settings, SystemClock()).issue('ghost-admin', 'admin')}"}
    refused = gw.client.get("/v1/admin/budgets", headers=ghost)
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert gw.client.get("/v1/me/settings", headers=ghost).status_code == 200  # still a user
    root = {"Authorization": f"Bearer {_login(gw, 'root', PASSWORD + '!').json()['access_token']}"}
    assert gw.client.get("/v1/admin/budgets", headers=root).status_code == 200  # a row: its role
