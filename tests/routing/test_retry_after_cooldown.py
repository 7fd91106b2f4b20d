"""A Retry-After beyond the route's patience cools the provider down for the time it asked for
(issue 14, item 5): the breaker opens for exactly that long, then half-opens as after its own
cooldown (manual clock; the HTTP path per wire format is in tests/test_typed_answers.py)."""

from __future__ import annotations

from tests.routing.routing_fakes import REQUEST, RecordingSleep, ScriptedProvider

from opsgate.clock import ManualClock
from opsgate.providers.errors import RateLimited
from opsgate.routing.breaker import BreakerState, CircuitBreaker
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router

CHAIN = (Target("anthropic", "claude-opus-5"), Target("deepseek", "deepseek-flash"))


def test_cool_down_opens_for_the_time_asked_then_half_opens() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("anthropic", clock, failure_threshold=5, cooldown_s=30.0)
    breaker.cool_down(90.0)
    assert (breaker.state, breaker.allow(), breaker.snapshot().open_for_s) == (BreakerState.OPEN, False, 90.0)
    breaker.cool_down(10.0)  # never shortens an open period
    assert breaker.snapshot().open_for_s == 90.0
    clock.advance(90.0)
    assert (breaker.state, breaker.allow(), breaker.allow()) == (BreakerState.HALF_OPEN, True, False)
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.snapshot().consecutive_failures == 0


async def test_the_next_calls_skip_the_provider_until_its_wait_is_over() -> None:
    clock = ManualClock()
    anthropic = ScriptedProvider("anthropic", clock, [RateLimited("anthropic", http_status=429, retry_after=45.0)])
    deepseek = ScriptedProvider("deepseek", clock)
    router = Router({"anthropic": anthropic, "deepseek": deepseek}, clock, RecordingSleep(clock),
                    failure_threshold=5, cooldown_s=30.0)
    policy = RoutePolicy(chain=CHAIN, timeout_s=10.0, max_attempts_per_target=3, max_retry_wait_s=30.0)
    first = await router.complete(REQUEST, policy)
    assert [(a.provider, a.outcome_kind) for a in first.attempts] == [("anthropic", "rate_limited"), ("deepseek", "ok")]
    clock.advance(44.0)
    second = await router.complete(REQUEST, policy)
    assert [(a.provider, a.outcome_kind) for a in second.attempts] == [("anthropic", "circuit_open"), ("deepseek", "ok")]
    assert len(anthropic.calls) == 1
    clock.advance(1.0)
    third = await router.complete(REQUEST, policy)
    assert [(a.provider, a.outcome_kind) for a in third.attempts] == [("anthropic", "ok")]


async def test_a_wait_within_patience_is_taken_and_cools_nothing() -> None:
    clock = ManualClock()
    sleep = RecordingSleep(clock)
    anthropic = ScriptedProvider("anthropic", clock, [RateLimited("anthropic", http_status=429, retry_after=20.0)])
    router = Router({"anthropic": anthropic, "deepseek": ScriptedProvider("deepseek", clock)}, clock, sleep)
    policy = RoutePolicy(chain=CHAIN, timeout_s=10.0, max_attempts_per_target=3, max_retry_wait_s=30.0)
    routed = await router.complete(REQUEST, policy)
    assert (routed.completion.provider, sleep.waits) == ("anthropic", [20.0])
    assert router.breaker("anthropic", CHAIN[0].model).state is BreakerState.CLOSED


# ------------------------------------------------------------------ the cap (tester B finding 2)

YEAR_S = 365 * 86_400.0


def test_a_wait_beyond_the_cap_opens_the_circuit_only_for_the_cap() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("custom", clock, failure_threshold=5, cooldown_s=30.0, max_wait_s=300.0)
    breaker.cool_down(YEAR_S)
    assert breaker.snapshot().open_for_s == 300.0
    clock.advance(299.0)
    assert (breaker.state, breaker.allow()) == (BreakerState.OPEN, False)
    clock.advance(1.0)
    assert (breaker.state, breaker.allow()) == (BreakerState.HALF_OPEN, True)
    breaker.record_failure(RateLimited("custom", http_status=429, retry_after=YEAR_S))
    assert (breaker.state, breaker.snapshot().open_for_s) == (BreakerState.OPEN, 300.0)


def test_a_failure_streak_holds_the_circuit_open_at_most_for_the_cap() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("gemini", clock, failure_threshold=2, cooldown_s=30.0, max_wait_s=120.0)
    breaker.record_failure(RateLimited("gemini", http_status=429, retry_after=10 * YEAR_S))
    breaker.record_failure(RateLimited("gemini", http_status=429, retry_after=5.0))
    assert (breaker.state, breaker.snapshot().open_for_s) == (BreakerState.OPEN, 120.0)


def test_the_cap_never_shortens_the_breakers_own_cooldown() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("deepseek", clock, failure_threshold=1, cooldown_s=30.0, max_wait_s=10.0)
    breaker.record_failure(RateLimited("deepseek", http_status=429, retry_after=YEAR_S))
    assert breaker.snapshot().open_for_s == 30.0
