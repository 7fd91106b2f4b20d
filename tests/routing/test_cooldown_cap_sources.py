"""Every source of a provider's asked-for wait is capped before it holds the circuit open (tester B,
finding 2): one 429 with ``retry-after: 31536000`` or an Anthropic reset weeks ahead used to skip
the provider until a restart. The waits are read by the adapters' own parsers from the providers'
header and body shapes; the router then cools the provider down for at most
``max_cooldown_s`` (setting ``breaker_max_cooldown_s``, default 300 s), after which one half-open
trial decides."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tests.routing.routing_fakes import REQUEST, RecordingSleep, ScriptedProvider

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.providers.anthropic import rate_limit_wait
from opsgate.providers.errors import RateLimited
from opsgate.providers.gemini import retry_delay
from opsgate.providers.http import retry_after_seconds
from opsgate.routing.breaker import BreakerState
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router

NOW = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)
CHAIN = (Target("anthropic", "claude-opus-5"), Target("deepseek", "deepseek-flash"))
POLICY = RoutePolicy(chain=CHAIN, timeout_s=10.0, max_attempts_per_target=3, max_retry_wait_s=30.0)

WAITS = {
    "retry-after": lambda: retry_after_seconds({"retry-after": "31536000"}, NOW),
    "retry-after-ms": lambda: retry_after_seconds({"retry-after-ms": "31536000000"}, NOW),
    "retry-after-date": lambda: retry_after_seconds({"retry-after": "Fri, 01 Jan 2027 00:00:00 GMT"}, NOW),
    "anthropic-reset": lambda: rate_limit_wait(
        {"anthropic-ratelimit-requests-remaining": "0",
         "anthropic-ratelimit-requests-reset": "2027-01-01T00:00:00Z"}, NOW),
    "gemini-retry-info": lambda: retry_delay(
        {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota.",
         "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2592000s"}]}),
}


@pytest.mark.parametrize("source", WAITS)
async def test_a_long_asked_for_wait_skips_the_provider_only_until_the_cap(source: str) -> None:
    wait = WAITS[source]()
    assert wait is not None and wait > 86_400  # the parser reads the long wait as asked
    clock = ManualClock()
    anthropic = ScriptedProvider("anthropic", clock, [RateLimited("anthropic", http_status=429, retry_after=wait)])
    router = Router({"anthropic": anthropic, "deepseek": ScriptedProvider("deepseek", clock)}, clock,
                    RecordingSleep(clock), failure_threshold=5, cooldown_s=30.0)
    first = await router.complete(REQUEST, POLICY)
    assert [(a.provider, a.outcome_kind) for a in first.attempts] == [("anthropic", "rate_limited"), ("deepseek", "ok")]
    assert router.breaker("anthropic", "claude-opus-5").snapshot().open_for_s == 300.0  # a 429: the model's
    clock.advance(299.0)
    skipped = await router.complete(REQUEST, POLICY)
    assert [(a.provider, a.outcome_kind) for a in skipped.attempts] == [("anthropic", "circuit_open"), ("deepseek", "ok")]
    clock.advance(1.0)
    trial = await router.complete(REQUEST, POLICY)
    assert [(a.provider, a.outcome_kind) for a in trial.attempts] == [("anthropic", "ok")]
    assert router.breaker("anthropic", "claude-opus-5").state is BreakerState.CLOSED


async def test_the_router_takes_the_cap_from_its_setting() -> None:
    clock = ManualClock()
    anthropic = ScriptedProvider("anthropic", clock, [RateLimited("anthropic", http_status=429, retry_after=9e9)])
    router = Router({"anthropic": anthropic, "deepseek": ScriptedProvider("deepseek", clock)}, clock,
                    RecordingSleep(clock), max_cooldown_s=60.0)
    await router.complete(REQUEST, POLICY)
    assert router.breaker("anthropic", "claude-opus-5").snapshot().open_for_s == 60.0
    assert Settings(_env_file=None).breaker_max_cooldown_s == 300.0
