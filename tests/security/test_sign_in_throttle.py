"""Failed password sign-ins are throttled per account and per client address (tester-priv F11:
72 wrong passwords in a row, no 429): 429 ``rate_limited`` with ``Retry-After`` (RFC 6585 §4),
before the password is checked, on every password sign-in route."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from opsgate.metering.errors import RateLimitExceeded
from opsgate.metering.requestlimits import MemoryRequestLog, RedisRequestLog
from opsgate.metering.signins import SignInThrottle
from tests.gateways import gateway_settings, running_gateway
from tests.limitstores import REDIS_URL, FakeClock, redis_prefix
from tests.security.credentials import add_login

PASSWORD = "correct horse battery staple"  # pragma: allowlist secret


def _login(gw, user, password):
    return gw.client.post("/v1/auth/token", data={"grant_type": "password", "username": user, "password": password})


def test_the_testers_72_wrong_passwords_meet_a_429_after_the_tenth(tmp_path):
    with running_gateway(gateway_settings(tmp_path)) as gw:  # the defaults: 10 per account in 15 minutes
        add_login(gw, "carol", "user", PASSWORD)
        started = time.monotonic()
        answers = [_login(gw, "carol", f"wrong password {i}") for i in range(12)]
        elapsed = math.ceil(time.monotonic() - started)  # the first failure is at most this long ago
        assert [a.status_code for a in answers] == [400] * 10 + [429] * 2
        refused = answers[10]
        assert refused.json()["code"] == "rate_limited" and refused.headers["content-type"] == "application/problem+json"
        assert 900 - elapsed - 1 <= int(refused.headers["retry-after"]) <= 900  # when the first failure leaves
        assert _login(gw, "carol", PASSWORD).status_code == 429  # the right password is not even checked
        assert _login(gw, "dave", "any password 1").status_code == 400  # another account: not throttled


def test_per_address_limit_and_every_sign_in_route(tmp_path):
    settings = gateway_settings(tmp_path, sign_in_failures_per_account=3, sign_in_failures_per_address=5)
    with running_gateway(settings) as gw:
        add_login(gw, "carol", "user", PASSWORD)
        assert [_login(gw, "carol", "wrong password 1").status_code for _ in range(4)] == [400, 400, 400, 429]
        session = gw.client.post("/v1/auth/session", data={"username": "CAROL", "password": PASSWORD})
        assert session.status_code == 429  # the same account, however it is written
        dashboard = gw.client.post("/dashboard/login", data={"username": "carol", "password": PASSWORD})
        assert dashboard.status_code == 429 and int(dashboard.headers["retry-after"]) > 0
        assert "Too many failed sign-ins" in dashboard.text
        assert _login(gw, "nobody@example.org", "wrong password 2").status_code == 400  # 4th and 5th failure
        assert _login(gw, "somebody", "wrong password 3").status_code == 400              # from this address
        refused = _login(gw, "anyone", "wrong password 4")
        assert refused.status_code == 429 and "from this address" in refused.json()["detail"]


def test_a_failure_leaves_the_window_after_it():
    clock = FakeClock(1000.0)
    throttle = SignInThrottle(MemoryRequestLog(clock, window_s=900), per_account=2, per_address=0)

    async def run() -> None:
        await throttle.failed("carol", "10.0.0.1")
        clock.now += 100
        await throttle.failed("carol", "10.0.0.1")
        with pytest.raises(RateLimitExceeded) as refused:
            await throttle.check("carol", "10.0.0.1")
        assert refused.value.retry_after == 800  # until the first failure is 900 s old
        clock.now += 800
        await throttle.check("carol", "10.0.0.1")  # one place free again
        await throttle.check("carol", "10.0.0.1")  # a check logs nothing

    asyncio.run(run())


@pytest.mark.redis
def test_replicas_share_the_failures_in_redis():
    async def run() -> None:
        async with redis_prefix() as (prefix, made):
            replicas = [RedisRequestLog(REDIS_URL, prefix, window_s=900) for _ in range(2)]
            made.extend(replicas)
            first, second = (SignInThrottle(log, per_account=2, per_address=0) for log in replicas)
            await first.failed("carol", None)
            await second.failed("Carol", None)
            with pytest.raises(RateLimitExceeded) as refused:
                await first.check("carol", None)
            assert 899 <= refused.value.retry_after <= 900

    asyncio.run(run())
