"""The circuit breaker alone, and as the router uses it."""

from __future__ import annotations

import asyncio

import pytest
from tests.routing.routing_fakes import REQUEST, RecordingSleep, ScriptedProvider

from opsgate.clock import ManualClock
from opsgate.providers.errors import (
    AuthenticationFailed,
    BillingFailed,
    ContentFiltered,
    InvalidRequest,
    Overloaded,
    RateLimited,
    ServerError,
)
from opsgate.routing.breaker import BreakerSnapshot, BreakerState, CircuitBreaker
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router

OVERLOADED = Overloaded("deepseek", http_status=503)


def breaker(threshold: int = 3, cooldown_s: float = 30.0) -> tuple[CircuitBreaker, ManualClock]:
    clock = ManualClock()
    return CircuitBreaker(
        "deepseek", clock, failure_threshold=threshold, cooldown_s=cooldown_s
    ), clock


def fail(b: CircuitBreaker, error: Exception = OVERLOADED, times: int = 1) -> None:
    for _ in range(times):
        assert b.allow()
        b.record_failure(error)  # type: ignore[arg-type]


def test_opens_after_n_consecutive_failures() -> None:
    b, _ = breaker(threshold=3)
    fail(b, times=2)
    assert b.state is BreakerState.CLOSED
    fail(b)
    assert b.state is BreakerState.OPEN
    assert b.allow() is False


def test_a_success_resets_the_streak() -> None:
    b, _ = breaker(threshold=3)
    fail(b, times=2)
    assert b.allow()
    b.record_success()
    fail(b, times=2)
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().consecutive_failures == 2


@pytest.mark.parametrize(
    "error",
    [AuthenticationFailed("deepseek", http_status=401), BillingFailed("deepseek", http_status=402)],
)
def test_auth_and_billing_failures_count(error: Exception) -> None:
    b, _ = breaker(threshold=2)
    fail(b, error, times=2)
    assert b.state is BreakerState.OPEN


@pytest.mark.parametrize(
    "error", [InvalidRequest("deepseek", http_status=400), ContentFiltered("deepseek")]
)
def test_request_side_errors_do_not_count(error: Exception) -> None:
    b, _ = breaker(threshold=2)
    fail(b, error, times=5)
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().consecutive_failures == 0


def test_half_opens_after_the_cooldown() -> None:
    b, clock = breaker(cooldown_s=30.0)
    fail(b, times=3)
    clock.advance(29.9)
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.advance(0.1)
    assert b.state is BreakerState.HALF_OPEN


def test_cooldown_stretches_to_the_longest_retry_after_seen() -> None:
    b, clock = breaker(threshold=3, cooldown_s=30.0)
    fail(b, RateLimited("deepseek", http_status=429, retry_after=90.0))
    clock.advance(10)  # this one asks for 90 s from t=0: until t=90
    fail(b, RateLimited("deepseek", http_status=429, retry_after=5.0))
    fail(b, OVERLOADED)  # opens at t=10; 30 s cooldown would end at t=40
    assert b.snapshot().open_for_s == 80.0
    clock.advance(79.9)
    assert b.state is BreakerState.OPEN
    clock.advance(0.1)
    assert b.state is BreakerState.HALF_OPEN


def test_half_open_admits_one_trial_at_a_time() -> None:
    b, clock = breaker()
    fail(b, times=3)
    clock.advance(30)
    assert b.allow() is True
    assert b.allow() is False
    assert b.snapshot().trial_in_flight is True


def test_successful_trial_closes() -> None:
    b, clock = breaker()
    fail(b, times=3)
    clock.advance(30)
    assert b.allow()
    b.record_success()
    assert b.snapshot() == BreakerSnapshot("deepseek", BreakerState.CLOSED, 0, 0.0, False)
    assert b.allow() and b.allow()


def test_failed_trial_reopens_for_a_new_cooldown() -> None:
    b, clock = breaker(cooldown_s=30.0)
    fail(b, times=3)
    clock.advance(30)
    fail(b)
    assert b.state is BreakerState.OPEN
    assert b.snapshot().open_for_s == 30.0
    clock.advance(30)
    assert b.state is BreakerState.HALF_OPEN


def test_neutral_trial_frees_the_slot_and_stays_half_open() -> None:
    b, clock = breaker()
    fail(b, times=3)
    clock.advance(30)
    fail(b, InvalidRequest("deepseek", http_status=400))
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() is True


def chain_policy() -> RoutePolicy:
    return RoutePolicy(
        chain=(Target("deepseek", "deepseek-chat"), Target("gemini", "gemini-2.0-flash")),
        timeout_s=10.0,
        max_attempts_per_target=1,
        max_retry_wait_s=30.0,
    )


def router_setup(script: list) -> tuple[Router, dict[str, ScriptedProvider], ManualClock]:
    clock = ManualClock()
    providers = {
        "deepseek": ScriptedProvider("deepseek", clock, script),
        "gemini": ScriptedProvider("gemini", clock),
    }
    router = Router(providers, clock, RecordingSleep(clock), failure_threshold=2, cooldown_s=30.0)
    return router, providers, clock


async def test_router_skips_a_provider_whose_breaker_is_open() -> None:
    router, providers, clock = router_setup([OVERLOADED, OVERLOADED])
    for _ in range(2):
        await router.complete(REQUEST, chain_policy())
    assert router.breaker("deepseek", "deepseek-chat").state is BreakerState.OPEN  # a 529: the model's
    routed = await router.complete(REQUEST, chain_policy())
    assert [(a.provider, a.outcome_kind) for a in routed.attempts] == [
        ("deepseek", "circuit_open"),
        ("gemini", "ok"),
    ]
    assert len(providers["deepseek"].calls) == 2
    clock.advance(30)
    routed = await router.complete(REQUEST, chain_policy())
    assert routed.completion.provider == "deepseek"
    assert router.breaker("deepseek", "deepseek-chat").state is BreakerState.CLOSED


async def test_router_lets_one_half_open_trial_through_and_rejects_concurrent_callers() -> None:
    router, providers, clock = router_setup([OVERLOADED, OVERLOADED])
    for _ in range(2):
        await router.complete(REQUEST, chain_policy())
    clock.advance(30)
    gate = asyncio.Event()
    providers["deepseek"].gate = gate
    trial = asyncio.create_task(router.complete(REQUEST, chain_policy()))
    await asyncio.sleep(0)  # the trial is now waiting inside deepseek
    others = await asyncio.gather(*(router.complete(REQUEST, chain_policy()) for _ in range(3)))
    assert [r.completion.provider for r in others] == ["gemini"] * 3
    assert all(r.attempts[0].outcome_kind == "circuit_open" for r in others)
    gate.set()
    assert (await trial).completion.provider == "deepseek"
    assert len(providers["deepseek"].calls) == 3


async def test_cancelled_trial_releases_the_half_open_slot() -> None:
    router, providers, clock = router_setup([OVERLOADED, OVERLOADED])
    for _ in range(2):
        await router.complete(REQUEST, chain_policy())
    clock.advance(30)
    providers["deepseek"].gate = asyncio.Event()
    trial = asyncio.create_task(router.complete(REQUEST, chain_policy()))
    await asyncio.sleep(0)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert router.breaker("deepseek", "deepseek-chat").snapshot().trial_in_flight is False
    assert router.breaker("deepseek", "deepseek-chat").state is BreakerState.HALF_OPEN


async def test_router_snapshot_lists_every_provider() -> None:
    router, _, _ = router_setup([ServerError("deepseek", http_status=500)])
    await router.complete(REQUEST, chain_policy())
    assert {(s.provider, s.state, s.consecutive_failures) for s in router.snapshot()} == {
        ("deepseek", BreakerState.CLOSED, 0),  # a 500 counts against the model's breaker
        ("gemini", BreakerState.CLOSED, 0),
    }
    assert [(s.provider, s.model, s.state, s.consecutive_failures) for s in router.model_snapshot()] == [
        ("deepseek", "deepseek-chat", BreakerState.CLOSED, 1),
        ("gemini", "gemini-2.0-flash", BreakerState.CLOSED, 0),
    ]
