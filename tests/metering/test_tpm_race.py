"""The TPM race (issue 14): 20 concurrent calls against a tokens-per-minute limit that fits 3.

The provider sandboxes answer slowly (``slow:3s``), so all 20 calls are in flight together. The
limit is 3.5 x the worst case the gateway holds for the request (computed with the gateway's own
:func:`call_worst_case_tokens`): exactly three are admitted, the other seventeen get 429
``rate_limited`` with a Retry-After. One gateway process with in-memory windows, and two gateway
processes sharing the windows in Redis.
"""

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
from opsgate.metering.tokenlimits import MemoryTokenWindows, RedisTokenWindows, TokenHold, TokenScope
from opsgate.metering.worstcase import call_worst_case_tokens
from opsgate.operations import get_operation
from opsgate.operations.io import input_from_file
from opsgate.security.auth import TokenService
from opsgate.store.db import upgrade

REPO = Path(__file__).resolve().parents[2]
OP = "email-classify"
CALLS = 20


def _body() -> dict:
    return input_from_file(OP, next((REPO / "examples").glob(f"{OP}.*")), None)


def _worst_tokens(body: dict) -> int:
    op = get_operation(OP)
    return call_worst_case_tokens(op.prepare(op.Input.model_validate(body)).request)


async def _fire(urls: list[str], token: str, body: dict) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=CALLS)) as client:
        return await asyncio.gather(*(
            client.post(f"{urls[i % len(urls)]}/v1/operations/{OP}", json=body,
                        headers={"Authorization": f"Bearer {token}"})
            for i in range(CALLS)))


@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_twenty_concurrent_calls_against_a_limit_that_fits_three(store: str, tmp_path: Path) -> None:
    body = _body()
    secret = secrets.token_urlsafe(48)
    env = {
        "OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'tpm.db'}",
        "OPSGATE_JWT_SECRET": secret,
        "OPSGATE_RATE_LIMIT_USER_TPM": str(_worst_tokens(body) * 7 // 2),
    }
    if store == "redis":
        env["OPSGATE_REDIS_URL"] = "redis://127.0.0.1:6379/0"
        env["OPSGATE_RATE_LIMIT_KEY_PREFIX"] = f"opsgate-test-{uuid.uuid4().hex}"
    upgrade(env["OPSGATE_DATABASE_URL"])
    token = TokenService(Settings(jwt_secret=secret), SystemClock()).issue("racer", "user")
    with gateway_processes(1 if store == "memory" else 2, env, tmp_path, faults="slow:3s") as urls:
        responses = asyncio.run(_fire(urls, token, body))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [429] * 17
    refused = [r for r in responses if r.status_code == 429]
    assert {r.json()["code"] for r in refused} == {"rate_limited"}
    assert all(1 <= int(r.headers["Retry-After"]) <= 120 for r in refused)
    assert "tokens per minute per user" in refused[0].json()["detail"]


async def _race(windows: object, scope: TokenScope, amount: int) -> int:
    results = await asyncio.gather(*(windows.take([scope], amount) for _ in range(CALLS)))  # type: ignore[attr-defined]
    return sum(isinstance(r, TokenHold) for r in results)


async def test_memory_windows_admit_three_of_twenty_then_settle_back() -> None:
    windows = MemoryTokenWindows(clock=lambda: 6000.0)
    scope = TokenScope("user:a", 3500, "per user")
    assert await _race(windows, scope, 1000) == 3
    hold = await windows.take([TokenScope("user:b", 3500, "per user")], 1000)
    await windows.settle(hold, 100)  # billed 100 of the 1000 held
    assert await _race(windows, TokenScope("user:b", 3500, "per user"), 1000) == 3  # 100 + 3000


@pytest.mark.redis
async def test_redis_windows_admit_three_of_twenty_across_two_clients() -> None:
    prefix = f"opsgate-test-{uuid.uuid4().hex}"
    a, b = (RedisTokenWindows("redis://127.0.0.1:6379/0", prefix) for _ in range(2))
    scope = TokenScope("user:a", 3500, "per user")
    try:
        admitted = await asyncio.gather(_race(a, scope, 1000), _race(b, scope, 1000))
        assert sum(admitted) == 3
        hold = await a.take([TokenScope("user:b", 3500, "per user")], 1000)
        await b.settle(hold, 100)
        assert sum(await asyncio.gather(_race(a, TokenScope("user:b", 3500, "per user"), 1000),
                                        _race(b, TokenScope("user:b", 3500, "per user"), 1000))) == 3
    finally:
        await a.close()
        await b.close()
