"""Rate limits: unit behaviour on memory storage, and two gateway processes sharing Redis."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from pathlib import Path

import httpx
import pytest
from tests.gateways import gateway_processes

from opsgate.clock import SystemClock
from opsgate.config import Settings
from opsgate.metering.errors import RateLimitExceeded
from opsgate.metering.ratelimit import RateLimiter, RateLimits
from opsgate.operations.io import input_from_file
from opsgate.problems import problem_response
from opsgate.store.db import upgrade

REPO = Path(__file__).resolve().parents[2]


async def test_requests_per_minute_per_user_and_per_pair() -> None:
    limiter = RateLimiter(RateLimits(user_rpm=3, user_operation_rpm=2))
    await limiter.admit("alice", "email-classify")
    await limiter.admit("alice", "email-classify")
    with pytest.raises(RateLimitExceeded) as info:
        await limiter.admit("alice", "email-classify")
    assert info.value.status == 429 and info.value.code == "rate_limited"
    assert 1 <= info.value.retry_after <= 60 and "per user and operation" in info.value.detail
    await limiter.admit("alice", "email-compose")  # third request of alice: the user limit's last
    with pytest.raises(RateLimitExceeded, match="per minute per user is reached"):
        await limiter.admit("alice", "task-breakdown")
    await limiter.admit("bob", "email-classify")  # other users are not affected


async def test_tokens_per_minute_are_held_at_admission_and_settled_to_the_actual() -> None:
    limiter = RateLimiter(RateLimits(user_tpm=1000))
    first = await limiter.take_tokens("alice", "email-classify", 600)  # worst case held
    with pytest.raises(RateLimitExceeded, match="1000 tokens per minute per user") as info:
        await limiter.take_tokens("alice", "email-classify", 600)  # 400 left: no room for 600
    assert 1 <= info.value.retry_after <= 120
    await limiter.settle_tokens(first, 150)  # billed 150: 450 come back
    second = await limiter.take_tokens("alice", "email-classify", 600)  # 150 + 600 <= 1000
    await limiter.settle_tokens(second, None)  # usage unknown: the worst case stays
    with pytest.raises(RateLimitExceeded):
        await limiter.take_tokens("alice", "email-classify", 300)  # 750 used, 250 left
    assert await limiter.take_tokens("bob", "email-classify", 600) is not None  # per user


async def test_a_call_larger_than_the_limit_is_refused_outright() -> None:
    limiter = RateLimiter(RateLimits(user_operation_tpm=500))
    with pytest.raises(RateLimitExceeded, match="up to 501 tokens, more than the limit of 500"):
        await limiter.take_tokens("alice", "email-classify", 501)
    assert await limiter.take_tokens("alice", "email-classify", 500) is not None


async def test_tokens_are_taken_from_every_scope_or_from_none() -> None:
    limiter = RateLimiter(RateLimits(user_tpm=1000, user_operation_tpm=400))
    await limiter.take_tokens("alice", "email-classify", 400)
    with pytest.raises(RateLimitExceeded, match="per user and operation"):
        await limiter.take_tokens("alice", "email-classify", 100)
    # the refused call took nothing from the user window: 600 are still there
    await limiter.take_tokens("alice", "task-breakdown", 400)
    await limiter.take_tokens("alice", "email-compose", 200)
    with pytest.raises(RateLimitExceeded, match="1000 tokens per minute per user"):
        await limiter.take_tokens("alice", "calendar-prep", 1)


def test_the_problem_carries_retry_after() -> None:
    response = problem_response(RateLimitExceeded("slow down", 17), "req-1")
    assert response.status_code == 429 and response.headers["Retry-After"] == "17"


async def test_no_limits_admit_everything() -> None:
    limiter = RateLimiter(RateLimits())
    for _ in range(100):
        await limiter.admit("alice", "email-classify")


@pytest.mark.redis
def test_two_gateway_processes_share_one_redis_limit(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(48)
    env = {
        "OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'rl.db'}",
        "OPSGATE_JWT_SECRET": secret,
        "OPSGATE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "OPSGATE_RATE_LIMIT_KEY_PREFIX": f"opsgate-test-{uuid.uuid4().hex}",
        "OPSGATE_RATE_LIMIT_USER_OPERATION_RPM": "5",
    }
    upgrade(env["OPSGATE_DATABASE_URL"])  # once, before two processes open the file
    token = TokenServiceFor(secret)
    body = input_from_file("email-classify", next((REPO / "examples").glob("email-classify.*")), None)

    async def fire(urls: list[str]) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return [await client.post(f"{urls[i % 2]}/v1/operations/email-classify", json=body,
                                      headers={"Authorization": f"Bearer {token}"})
                    for i in range(10)]

    with gateway_processes(2, env, tmp_path) as urls:
        responses = asyncio.run(fire(urls))
    codes = [r.status_code for r in responses]
    assert codes == [200] * 5 + [429] * 5  # five in total across both processes, not five each
    limited = responses[-1]
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


def TokenServiceFor(secret: str) -> str:  # noqa: N802
    from opsgate.security.auth import TokenService

    return TokenService(Settings(jwt_secret=secret), SystemClock()).issue("limited", "user")
