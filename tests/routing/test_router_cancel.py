"""The router stops sending once the caller has gone (tester-wire F3): a :class:`Cancel` is asked
before every request that follows one already sent (retry, fallback), a retry's wait ends when
the caller leaves, and the first request is never preceded by a check (issue 21)."""

from __future__ import annotations

import asyncio

import pytest
from tests.routing.routing_fakes import REQUEST, ScriptedProvider

from opsgate.clock import ManualClock
from opsgate.providers.errors import ProviderTimeout, RateLimited, ServerError
from opsgate.routing.errors import ClientClosed
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Router

CHAIN = (Target("anthropic", "claude-opus-4-5"), Target("deepseek", "deepseek-chat"))


class FakeCancel:
    """A caller that is gone once ``leave()`` was called; counts how often it was asked."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.asked = 0

    def leave(self) -> None:
        self.left.set()

    async def gone(self) -> bool:
        self.asked += 1
        return self.left.is_set()

    async def wait_gone(self) -> None:
        await self.left.wait()


class Setup:
    def __init__(self, anthropic: list, sleep: object = None) -> None:
        self.clock = ManualClock()
        self.waits: list[float] = []
        self.providers = {
            "anthropic": ScriptedProvider("anthropic", self.clock, list(anthropic)),
            "deepseek": ScriptedProvider("deepseek", self.clock),
        }
        self.router = Router(self.providers, self.clock, sleep or self.sleep, failure_threshold=100,
                             rand=lambda: 0.5)
        self.cancel = FakeCancel()

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)

    def calls(self, name: str) -> int:
        return len(self.providers[name].calls)


def policy(**changes: object) -> RoutePolicy:
    fields: dict[str, object] = dict(chain=CHAIN, timeout_s=5.0, max_attempts_per_target=3,
                                     max_retry_wait_s=30.0)
    return RoutePolicy(**(fields | changes))  # type: ignore[arg-type]


async def test_no_retry_starts_after_the_caller_left_during_the_first_request() -> None:
    s = Setup([])

    def leaves_then_500() -> ServerError:  # the client gives up while the request is in flight
        s.cancel.leave()
        return ServerError("anthropic", http_status=500)

    s.providers["anthropic"].script = [leaves_then_500]
    with pytest.raises(ClientClosed) as closed:
        await s.router.complete(REQUEST, policy(), cancel=s.cancel)
    assert (closed.value.code, closed.value.status) == ("client_closed", 499)
    assert [(a.provider, a.outcome_kind) for a in closed.value.attempts] == [("anthropic", "server_error")]
    assert (s.calls("anthropic"), s.calls("deepseek"), s.waits) == (1, 0, [])


async def test_no_fallback_starts_after_the_caller_left_during_a_timed_out_request() -> None:
    """The repro's shape: the first request times out after the client left."""
    s = Setup([])

    def leaves_then_times_out() -> ProviderTimeout:
        s.cancel.leave()
        return ProviderTimeout("anthropic", "no answer within 5 s")

    s.providers["anthropic"].script = [leaves_then_times_out]
    with pytest.raises(ClientClosed) as closed:
        await s.router.complete(REQUEST, policy(chain=CHAIN[:1]), cancel=s.cancel)
    assert [(a.provider, a.outcome_kind, a.sent) for a in closed.value.attempts] == [
        ("anthropic", "timeout", True)]
    assert s.calls("anthropic") == 1


async def test_a_retry_after_wait_ends_when_the_caller_leaves() -> None:
    cancel_holder: list[FakeCancel] = []
    waits: list[float] = []

    async def sleep_until_the_caller_leaves(seconds: float) -> None:
        waits.append(seconds)
        cancel_holder[0].leave()  # the client goes away during the 7 s wait
        await asyncio.Event().wait()  # never ends by itself

    s = Setup([RateLimited("anthropic", http_status=429, retry_after=7.0)], sleep=sleep_until_the_caller_leaves)
    cancel_holder.append(s.cancel)
    with pytest.raises(ClientClosed) as closed:
        await s.router.complete(REQUEST, policy(), cancel=s.cancel)
    assert waits == [7.0]
    assert [(a.provider, a.outcome_kind) for a in closed.value.attempts] == [("anthropic", "rate_limited")]
    assert (s.calls("anthropic"), s.calls("deepseek")) == (1, 0)


async def test_the_first_request_is_sent_without_asking_and_a_success_never_asks() -> None:
    s = Setup([])
    s.cancel.leave()  # even a caller gone already: the check costs a first request nothing
    routed = await s.router.complete(REQUEST, policy(), cancel=s.cancel)
    assert routed.completion.provider == "anthropic"
    assert s.cancel.asked == 0


async def test_a_caller_still_there_gets_its_retries_and_fallbacks() -> None:
    s = Setup([ServerError("anthropic", http_status=500)] * 3)
    routed = await s.router.complete(REQUEST, policy(), cancel=s.cancel)
    assert [(a.provider, a.outcome_kind) for a in routed.attempts] == [
        ("anthropic", "server_error")] * 3 + [("deepseek", "ok")]
    assert s.cancel.asked == 5  # before the two waits, the two retries and the fallback
    assert s.waits == [0.125, 0.25]
