"""The security report's counted sections: real refusals over HTTP, flushed, read back by the report."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from sqlalchemy import text
from tests.budgets import ADMIN
from tests.gateways import gateway_settings, running_gateway
from tests.security.credentials import add_login

from opsgate.clock import ManualClock, SystemClock
from opsgate.config import Settings
from opsgate.metering.budgets import set_budget
from opsgate.operations.io import input_from_file
from opsgate.reports.security import build_security_report
from opsgate.security.auth import TokenService, bearer_token
from opsgate.security.counts import (
    COUNTS,
    CountFlusher,
    SecurityCounts,
    count_refusal,
    counts_for,
)
from opsgate.security.errors import AuthFailure, Unauthorized
from opsgate.security.sanitizer import Sanitizer
from opsgate.store.db import make_engine, upgrade

FORM_TOKEN = "/v1/auth/token"
PASSWORD = "correct horse battery staple"  # pragma: allowlist secret
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BODY = input_from_file("email-classify", next(EXAMPLES.glob("email-classify.*")), None)


@pytest.fixture
def engine(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _report(runtime) -> dict:  # type: ignore[no-untyped-def,type-arg]
    now = datetime.now(UTC)
    return build_security_report(runtime.engine, runtime.settings, now.date(), now)["sections"]


def test_refusals_over_http_are_the_reports_numbers(gateway) -> None:  # type: ignore[no-untyped-def]
    COUNTS.drain()  # counts other tests left in this process belong to no database here
    settings = gateway.settings
    past = ManualClock(datetime.now(UTC) - timedelta(hours=2))
    expired = TokenService(settings, past).issue("alice", "user")
    forged = TokenService(_settings(), SystemClock()).issue("alice", "user")
    statuses = [gateway.client.post("/v1/operations/email-classify", json=BODY).status_code]
    statuses += [gateway.post("email-classify", BODY, token=expired).status_code for _ in range(3)]
    statuses += [gateway.post("email-classify", BODY, token=forged).status_code for _ in range(2)]
    statuses.append(gateway.client.post(FORM_TOKEN, data={  # RFC 6749 §5.2 invalid_grant: 400
        "grant_type": "password", "username": "nobody", "password": "guess"}).status_code)  # pragma: allowlist secret
    set_budget(gateway.runtime.ledger, SystemClock(), actor=ADMIN, user_id="*", operation="*", period="day",
               limit_micro_usd=0)
    statuses += [gateway.post("email-classify", BODY).status_code for _ in range(2)]
    assert statuses == [401] * 6 + [400] + [402] * 2
    assert gateway.runtime.security_counts.flush() == 5  # five (kind, reason) rows, one write

    s = _report(gateway.runtime)
    assert s["auth_failures"] == {"available": True, "total": 7, "rows": [
        {"kind": "sign_in_failure", "reason": "bad_credentials", "count": 1},
        {"kind": "token_rejection", "reason": "expired", "count": 3},
        {"kind": "token_rejection", "reason": "bad_signature", "count": 2},
        {"kind": "token_rejection", "reason": "missing", "count": 1},
    ]}
    assert s["rejections"] == {"available": True, "total": 2, "rows": [
        {"kind": "rejection", "reason": "budget_exceeded", "count": 2}]}
    assert s["refresh_reuse"]["total"] == 0


def test_refresh_reuse_is_counted_once_per_detection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with running_gateway(gateway_settings(tmp_path, refresh_reuse_grace_s=0)) as gw:
        add_login(gw, "ada", "user", PASSWORD)
        COUNTS.drain()
        login = gw.client.post(FORM_TOKEN, data={
            "grant_type": "password", "username": "ada", "password": PASSWORD})
        first = login.json()["refresh_token"]
        grant = {"grant_type": "refresh_token", "refresh_token": first}
        assert gw.client.post("/v1/auth/refresh", data=grant).status_code == 200
        reuse = gw.client.post("/v1/auth/refresh", data=grant)
        assert reuse.status_code == 400 and "already used" in reuse.json()["error_description"]
        again = gw.client.post("/v1/auth/refresh", data=grant)  # the family is revoked now
        assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
        gw.runtime.security_counts.flush()
        s = _report(gw.runtime)
    assert s["refresh_reuse"] == {"available": True, "total": 1, "rows": [
        {"kind": "refresh_reuse", "reason": "family_revoked", "count": 1}]}
    assert s["auth_failures"]["rows"] == [
        {"kind": "token_rejection", "reason": "refresh_invalid", "count": 1}]


def _settings(**overrides: object) -> Settings:
    """Settings with a generated JWT key (``jwt_issuer``/``jwt_audience`` defaults unless given)."""
    return Settings(**{"jwt_secret": secrets.token_urlsafe(48), "_env_file": None, **overrides})


def _refusal(settings: Settings, token: str | None, header: str | None = None) -> Unauthorized:
    tokens = TokenService(settings, SystemClock())
    with pytest.raises(Unauthorized) as caught:
        tokens.verify(bearer_token(header if header is not None else token and f"Bearer {token}"))
    return caught.value


def test_every_token_refusal_has_its_reason_code() -> None:
    settings, now = _settings(), datetime.now(UTC)

    def issue(s: Settings, at: datetime = now) -> str:
        return TokenService(s, ManualClock(at)).issue("bo", "user")

    claims = {"sub": "bo", "role": "admin", "iss": "opsgate", "aud": "opsgate-api",
              "iat": now, "nbf": now, "exp": now + timedelta(hours=1)}
    unsigned = jwt.encode(claims, None, algorithm="none")
    other_role = jwt.encode({**claims, "role": "root"}, settings.jwt_secret.get_secret_value(),
                            algorithm="HS256")
    cases = {
        "missing": _refusal(settings, None),
        "wrong_scheme": _refusal(settings, None, header="Basic Ym86cHc="),
        "malformed": _refusal(settings, "not-a-jwt"),
        "bad_signature": _refusal(settings, issue(_settings())),
        "bad_algorithm": _refusal(settings, unsigned),
        "wrong_audience": _refusal(settings, issue(_settings(jwt_audience="elsewhere",
                                                             jwt_secret=settings.jwt_secret))),
        "expired": _refusal(settings, issue(settings, now - timedelta(hours=2))),
        "not_yet_valid": _refusal(settings, issue(settings, now + timedelta(hours=1))),
        "unknown_role": _refusal(settings, other_role),
    }
    assert {reason: exc.reason for reason, exc in cases.items()} == {r: r for r in cases}


def test_a_refusal_is_counted_by_its_reason_whatever_its_words() -> None:
    COUNTS.drain()
    count_refusal(Unauthorized(AuthFailure.EXPIRED, "Your session ran out, please sign in again"))
    count_refusal(Unauthorized(AuthFailure.EXPIRED))
    assert COUNTS.drain() == {("token_rejection", "expired"): 2}


def test_redactions_are_counted_by_kind(engine) -> None:  # type: ignore[no-untyped-def]
    sanitizer = Sanitizer()
    key = "sk-ant-api03-" + secrets.token_urlsafe(32)
    COUNTS.drain()
    out = sanitizer.sanitize(f"mail ann@example.org and bob@example.org, key {key}")
    assert out.count("[REDACTED:email:") == 2 and "[REDACTED:anthropic:" in out
    sanitizer.sanitize(out)  # already redacted: a fixed point, nothing new counted
    clock = ManualClock(datetime(2026, 11, 29, 9, tzinfo=UTC))
    assert CountFlusher(engine, clock).flush() == 2
    assert counts_for(engine, date(2026, 11, 29)) == {"redaction": {"anthropic": 1, "email": 2}}


def test_counts_land_on_the_day_their_window_started_and_add_up(engine) -> None:  # type: ignore[no-untyped-def]
    counts, clock = SecurityCounts(), ManualClock(datetime(2026, 11, 29, 23, 59, 30, tzinfo=UTC))
    flusher = CountFlusher(engine, clock, counts=counts)
    counts.add("rejection", "rate_limited", 4)
    clock.advance(60)  # flushed just after midnight: still the 29th's events
    assert flusher.flush() == 1
    counts.add("rejection", "rate_limited")
    assert flusher.flush() == 1
    other = CountFlusher(engine, clock, counts=counts)  # a second process adds to the same rows
    counts.add("rejection", "rate_limited", 2)
    other.flush()
    assert counts_for(engine, date(2026, 11, 29)) == {"rejection": {"rate_limited": 4}}
    assert counts_for(engine, date(2026, 11, 30)) == {"rejection": {"rate_limited": 3}}


def test_a_failed_flush_keeps_its_counts(engine) -> None:  # type: ignore[no-untyped-def]
    counts, clock = SecurityCounts(), ManualClock(datetime(2026, 11, 29, 12, tzinfo=UTC))
    flusher = CountFlusher(engine, clock, counts=counts)
    counts.add("token_rejection", "expired", 5)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE security_event_counts RENAME TO parked"))
    assert flusher.flush() == 0
    counts.add("token_rejection", "expired")
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE parked RENAME TO security_event_counts"))
    assert flusher.flush() == 1
    assert counts_for(engine, date(2026, 11, 29)) == {"token_rejection": {"expired": 6}}


async def test_the_loop_flushes_on_its_interval(engine) -> None:  # type: ignore[no-untyped-def]
    counts, today = SecurityCounts(), datetime.now(UTC).date()
    flusher = CountFlusher(engine, SystemClock(), interval_s=0.05, counts=counts)
    flusher.start()
    try:
        counts.add("refresh_reuse", "family_revoked")
        for _ in range(100):
            if counts_for(engine, today):
                break
            await asyncio.sleep(0.02)
        assert counts_for(engine, today) == {"refresh_reuse": {"family_revoked": 1}}
    finally:
        await flusher.stop()


async def test_stop_flushes_what_the_loop_has_not(engine) -> None:  # type: ignore[no-untyped-def]
    counts, today = SecurityCounts(), datetime.now(UTC).date()
    flusher = CountFlusher(engine, SystemClock(), interval_s=3600, counts=counts)
    flusher.start()
    counts.add("sign_in_failure", "bad_credentials", 2)
    await asyncio.sleep(0.05)
    assert counts_for(engine, today) == {}
    await flusher.stop()
    assert counts_for(engine, today) == {"sign_in_failure": {"bad_credentials": 2}}
