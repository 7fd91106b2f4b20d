"""Circuit breakers per provider and per (provider, model): a model's failures skip that model
only; failures of the provider's endpoint or account skip every model of it."""

from __future__ import annotations

import pytest
from tests.routing.routing_fakes import REQUEST, RecordingSleep, ScriptedProvider, completion

from opsgate.clock import ManualClock
from opsgate.providers.base import Completion, CompletionRequest
from opsgate.providers.errors import (
    AuthenticationFailed,
    BillingFailed,
    ConnectionFailed,
    EmptyAnswer,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Scope,
    ServerError,
    SpendCapReached,
)
from opsgate.routing.breaker import BreakerState
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router

OPUS, SONNET, HAIKU = (Target("anthropic", m) for m in ("claude-opus-5", "claude-sonnet-5", "claude-haiku-5"))
FLASH = Target("deepseek", "deepseek-flash")


def policy(*chain: Target) -> RoutePolicy:
    return RoutePolicy(chain=chain, timeout_s=10.0, max_attempts_per_target=1, max_retry_wait_s=30.0)


class OneModelFails(ScriptedProvider):
    """Raises its script's errors only for calls to Opus (provider-wide faults: for any model)."""

    async def complete(self, request: CompletionRequest, model: str, timeout_s: float) -> Completion:
        self.calls.append((model, timeout_s))
        if self.script and (model == OPUS.model or self.script[0].scope is Scope.PROVIDER):
            raise self.script.pop(0)
        return completion(self.name, model)


def setup(script: list, targets: tuple[Target, ...] = ()) -> tuple[Router, ScriptedProvider, ManualClock]:
    clock = ManualClock()
    anthropic = OneModelFails("anthropic", clock, script)
    router = Router({"anthropic": anthropic, "deepseek": ScriptedProvider("deepseek", clock)}, clock,
                    RecordingSleep(clock), failure_threshold=2, cooldown_s=30.0, targets=targets)
    return router, anthropic, clock


def kinds(routed) -> list[tuple[str, str, str]]:
    return [(a.provider, a.model, a.outcome_kind) for a in routed.attempts]


MODEL_FAULTS = [
    Overloaded("anthropic", "HTTP 529 overloaded_error", http_status=529),
    ServerError("anthropic", http_status=500),
    ProviderTimeout("anthropic"),
    RateLimited("anthropic", http_status=429),
    EmptyAnswer("anthropic", http_status=200),
]
PROVIDER_FAULTS = [
    ConnectionFailed("anthropic", "transport failure (ClientConnectorDNSError)"),
    AuthenticationFailed("anthropic", http_status=401),
    BillingFailed("anthropic", http_status=402),
    SpendCapReached("anthropic", http_status=429),
]


@pytest.mark.parametrize("error", MODEL_FAULTS, ids=lambda e: f"{e.kind}-{e.http_status}")
async def test_a_models_failures_leave_the_providers_other_models_callable(error: ProviderError) -> None:
    """The per-provider breaker opened on Opus's failures and then skipped Sonnet as a fallback
    and Haiku on another operation's route."""
    router, anthropic, _ = setup([error, error])
    for _ in range(2):
        await router.complete(REQUEST, policy(OPUS, FLASH))
    routed = await router.complete(REQUEST, policy(OPUS, SONNET, FLASH))
    assert kinds(routed) == [("anthropic", "claude-opus-5", "circuit_open"), ("anthropic", "claude-sonnet-5", "ok")]
    other_operation = await router.complete(REQUEST, policy(HAIKU, FLASH))
    assert kinds(other_operation) == [("anthropic", "claude-haiku-5", "ok")]
    assert [m for m, _ in anthropic.calls] == ["claude-opus-5", "claude-opus-5", "claude-sonnet-5", "claude-haiku-5"]
    assert (router.breaker("anthropic").state, router.breaker("anthropic", "claude-opus-5").state) == (
        BreakerState.CLOSED, BreakerState.OPEN)


async def test_a_models_failures_are_not_forgiven_by_another_models_answers() -> None:
    """Sonnet's answers closed the shared breaker after each Opus failure: Opus was asked (and
    failed) on every call, never skipped."""
    router, anthropic, _ = setup([Overloaded("anthropic", http_status=529)] * 3)
    for _ in range(3):
        routed = await router.complete(REQUEST, policy(OPUS, SONNET, FLASH))
    assert kinds(routed) == [("anthropic", "claude-opus-5", "circuit_open"), ("anthropic", "claude-sonnet-5", "ok")]
    assert [m for m, _ in anthropic.calls].count("claude-opus-5") == 2


@pytest.mark.parametrize("error", PROVIDER_FAULTS, ids=lambda e: f"{e.kind}-{e.http_status}")
async def test_a_providers_endpoint_or_account_failures_skip_every_model_of_it(error: ProviderError) -> None:
    router, anthropic, _ = setup([error, error])
    await router.complete(REQUEST, policy(OPUS, FLASH))
    await router.complete(REQUEST, policy(SONNET, FLASH))  # the streak spans models
    routed = await router.complete(REQUEST, policy(OPUS, SONNET, FLASH))
    assert kinds(routed) == [("anthropic", "claude-opus-5", "circuit_open"),
                             ("anthropic", "claude-sonnet-5", "circuit_open"), ("deepseek", "deepseek-flash", "ok")]
    assert len(anthropic.calls) == 2
    assert router.breaker("anthropic").state is BreakerState.OPEN


async def test_a_rate_limits_cool_down_holds_back_its_model_only() -> None:
    router, _, clock = setup([RateLimited("anthropic", http_status=429, retry_after=90.0)])
    await router.complete(REQUEST, policy(OPUS, FLASH))
    clock.advance(60.0)
    routed = await router.complete(REQUEST, policy(OPUS, SONNET, FLASH))
    assert kinds(routed) == [("anthropic", "claude-opus-5", "circuit_open"), ("anthropic", "claude-sonnet-5", "ok")]
    assert router.breaker("anthropic", "claude-opus-5").snapshot().open_for_s == 30.0


async def test_a_half_open_model_trial_is_not_spent_when_the_provider_refuses() -> None:
    router, _, clock = setup([])
    router.breaker("anthropic", "claude-opus-5").cool_down(10.0)
    router.breaker("anthropic").cool_down(60.0)
    clock.advance(10.0)  # the model half-opens while the provider is still open
    routed = await router.complete(REQUEST, policy(OPUS, FLASH))
    assert kinds(routed)[0] == ("anthropic", "claude-opus-5", "circuit_open")
    assert router.breaker("anthropic", "claude-opus-5").snapshot().trial_in_flight is False


def test_the_scopes_of_the_failure_kinds() -> None:
    assert {type(e).__name__: e.scope for e in MODEL_FAULTS + PROVIDER_FAULTS} == {
        "Overloaded": Scope.MODEL, "ServerError": Scope.MODEL, "ProviderTimeout": Scope.MODEL,
        "RateLimited": Scope.MODEL, "EmptyAnswer": Scope.MODEL, "ConnectionFailed": Scope.PROVIDER,
        "AuthenticationFailed": Scope.PROVIDER, "BillingFailed": Scope.PROVIDER, "SpendCapReached": Scope.PROVIDER}


# ------------------------------------------------------------- availability, as /metrics shows it


async def test_a_provider_stays_available_while_one_configured_model_can_be_called() -> None:
    router, _, clock = setup([Overloaded("anthropic", http_status=529)] * 2, targets=(OPUS, SONNET, FLASH))
    for _ in range(2):
        await router.complete(REQUEST, policy(OPUS, FLASH))
    states = {s.provider: s.state for s in router.snapshot()}
    assert states == {"anthropic": BreakerState.CLOSED, "deepseek": BreakerState.CLOSED}
    assert [(s.provider, s.model, s.state) for s in router.model_snapshot()] == [
        ("anthropic", "claude-opus-5", BreakerState.OPEN), ("anthropic", "claude-sonnet-5", BreakerState.CLOSED),
        ("deepseek", "deepseek-flash", BreakerState.CLOSED)]


async def test_a_provider_none_of_whose_configured_models_can_be_called_is_unavailable() -> None:
    router, _, clock = setup([], targets=(OPUS, SONNET, FLASH))
    router.breaker("anthropic", "claude-opus-5").cool_down(60.0)
    router.breaker("anthropic", "claude-sonnet-5").cool_down(20.0)
    snap = {s.provider: s for s in router.snapshot()}["anthropic"]
    assert (snap.state, snap.open_for_s, snap.model) == (BreakerState.OPEN, 20.0, None)  # the sooner one
    clock.advance(20.0)
    assert {s.provider: s.state for s in router.snapshot()}["anthropic"] is BreakerState.HALF_OPEN


def test_model_breakers_exist_only_for_configured_providers_and_targets() -> None:
    router, _, _ = setup([], targets=(OPUS, Target("local-vllm", "qwen3-8b")))
    assert [(s.provider, s.model) for s in router.model_snapshot()] == [("anthropic", "claude-opus-5")]
    with pytest.raises(KeyError):
        router.breaker("local-vllm", "qwen3-8b")
