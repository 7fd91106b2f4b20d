"""An access token dies with its login (tester-priv F5): logout, refresh-token reuse, a role or a
password change revoke the login's refresh-token family, and every access token carrying that
family as its ``sid`` is refused: at once in the process that revoked, within
``REFRESH_S`` (one second) in every other process sharing the database."""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import update

from opsgate.clock import ManualClock
from opsgate.security.auth import TokenService
from opsgate.security.errors import AuthFailure, Unauthorized
from opsgate.security.models import refresh_tokens
from opsgate.security.refresh import RefreshTokens
from opsgate.security.revocations import REFRESH_S, SKEW_S, RevokedLogins
from opsgate.security.users import set_role
from opsgate.testing import gateway_settings as plain_settings
from tests.gateways import gateway_settings, running_gateway
from tests.security.credentials import add_login
from tests.stores import migrated_engine

PASSWORD = "correct horse battery staple"  # pragma: allowlist secret
REVOKED = "The access token's login was revoked; sign in again"


@pytest.fixture
def gw(tmp_path):
    with running_gateway(gateway_settings(tmp_path)) as gateway:
        add_login(gateway, "carol", "user", PASSWORD)
        add_login(gateway, "root", "admin", PASSWORD + "!")
        yield gateway


def _login(gw, user="carol", password=PASSWORD):
    response = gw.client.post("/v1/auth/token", data={"grant_type": "password", "username": user, "password": password})
    assert response.status_code == 200, response.text
    return response.json()


def _refresh(gw, token):
    return gw.client.post("/v1/auth/refresh", data={"grant_type": "refresh_token", "refresh_token": token})


def _me(gw, access):
    return gw.client.get("/v1/me/settings", headers={"Authorization": f"Bearer {access}"})


def _revoked(response):
    assert response.status_code == 401, response.text
    assert (response.json()["code"], response.json()["detail"]) == ("unauthorized", REVOKED)
    return True


def test_access_tokens_carry_their_login_as_sid(gw):
    first = _login(gw)
    claims = jwt.decode(first["access_token"], options={"verify_signature": False})
    rotated = _refresh(gw, first["refresh_token"]).json()
    assert jwt.decode(rotated["access_token"], options={"verify_signature": False})["sid"] == claims["sid"]
    assert jwt.decode(_login(gw)["access_token"], options={"verify_signature": False})["sid"] != claims["sid"]


def test_logout_refuses_that_logins_access_token_at_once_and_no_other(gw):
    one, other = _login(gw), _login(gw)
    assert _me(gw, one["access_token"]).status_code == 200
    assert gw.client.post("/v1/auth/logout", data={"refresh_token": one["refresh_token"]}).status_code == 204
    assert _revoked(_me(gw, one["access_token"]))
    assert _me(gw, other["access_token"]).status_code == 200  # another login of the same user


def test_refresh_token_reuse_refuses_every_access_token_of_the_family(gw):
    """The tester's reproduction: AT2 answered 200 on a user route and an operation after reuse."""
    first = _login(gw)
    second = _refresh(gw, first["refresh_token"]).json()
    third = _refresh(gw, second["refresh_token"]).json()  # the legitimate rotation
    assert _me(gw, second["access_token"]).status_code == 200
    assert _refresh(gw, first["refresh_token"]).status_code == 400  # reuse: the family is revoked
    for access in (first["access_token"], second["access_token"], third["access_token"]):
        assert _revoked(_me(gw, access))
    operation = gw.client.post("/v1/operations/email-classify", json={"raw": "Subject: hi\n\nhello"},
                               headers={"Authorization": f"Bearer {second['access_token']}"})
    assert _revoked(operation)


def test_a_role_change_ends_the_users_logins(gw):
    carol = _login(gw)["access_token"]
    root = {"Authorization": f"Bearer {_login(gw, 'root', PASSWORD + '!')['access_token']}"}
    assert gw.client.put("/v1/admin/users/carol", json={"role": "operator"}, headers=root).status_code == 200
    assert _revoked(_me(gw, carol))
    assert _me(gw, _login(gw)["access_token"]).status_code == 200  # a new login works


def test_tokens_without_a_login_are_not_affected_and_a_non_string_sid_is_malformed(gw):
    service = gw.runtime.tokens
    assert "sid" not in jwt.decode(service.issue("carol", "user"), options={"verify_signature": False})
    assert _me(gw, service.issue("carol", "user")).status_code == 200
    forged = jwt.encode({**jwt.decode(service.issue("carol", "user"), options={"verify_signature": False}),
                         "sid": ["a"]}, gw.settings.jwt_secret.get_secret_value(), algorithm="HS256")
    with pytest.raises(Unauthorized) as refused:
        service.verify(forged)
    assert refused.value.reason == AuthFailure.MALFORMED


def test_another_process_refuses_within_the_refresh_interval(tmp_path):
    """Two gateways (two runtimes) over one database: a logout at A is refused at B within
    ``REFRESH_S`` plus one read."""
    settings = gateway_settings(tmp_path)
    with running_gateway(settings) as a, running_gateway(settings) as b:
        add_login(a, "carol", "user", PASSWORD)
        login = _login(a)
        assert _me(b, login["access_token"]).status_code == 200
        assert a.client.post("/v1/auth/logout", data={"refresh_token": login["refresh_token"]}).status_code == 204
        revoked_at = time.monotonic()
        assert _revoked(_me(a, login["access_token"]))  # the revoking process: at once
        while _me(b, login["access_token"]).status_code == 200:
            assert time.monotonic() - revoked_at < REFRESH_S + 1.0, "B still accepts the revoked login"
            time.sleep(0.05)
        assert _revoked(_me(b, login["access_token"]))
        print(f"refused by the other process after {time.monotonic() - revoked_at:.3f} s")


def test_revoked_logins_are_read_from_the_database_and_forgotten_after_the_horizon(tmp_path):
    clock = ManualClock()
    settings = plain_settings(tmp_path)
    engine = migrated_engine(tmp_path)
    here, there = (RevokedLogins(engine, clock, settings.access_token_ttl_s) for _ in range(2))
    tokens = RefreshTokens(engine, clock, 3600, 10, successor_key=b"k" * 32, on_revoke=here.add)
    login, other = tokens.issue("carol"), tokens.issue("carol")
    issuer = TokenService(settings, clock)
    access = issuer.issue("carol", "user", sid=login.family_id)
    tokens.revoke(login.token)
    assert login.family_id in here and login.family_id not in there  # the other process has not read yet
    assert TokenService(settings, clock, there).verify(access).user_id == "carol"
    there.refresh()
    assert login.family_id in there and other.family_id not in there
    with pytest.raises(Unauthorized) as refused:
        TokenService(settings, clock, there).verify(access)
    assert refused.value.reason == AuthFailure.REVOKED
    tokens.revoke_user("carol")  # e.g. a password change: every login of the user
    assert other.family_id in here
    clock.advance(settings.access_token_ttl_s + SKEW_S + 1)  # every access token of those logins expired
    with engine.begin() as conn:  # a revocation older than the horizon, by another clock
        conn.execute(update(refresh_tokens).values(revoked_at=clock.now() - timedelta(days=1)))
    here.refresh()
    assert login.family_id not in here and other.family_id not in here
    engine.dispose()
