"""The router's retry loop and fallback chain: fake providers, manual clock, recording sleep."""

from __future__ import annotations

import asyncio

import pytest
from tests.routing.routing_fakes import REQUEST, RecordingSleep, ScriptedProvider

from opsgate.clock import ManualClock
from opsgate.providers.errors import (
    AuthenticationFailed,
    BillingFailed,
    ConnectionFailed,
    ContentFiltered,
    EmptyAnswer,
    IncompleteAnswer,
    InvalidRequest,
    MalformedResponse,
    Overloaded,
    ProviderTimeout,
    RateLimited,
    ServerError,
    SpendCapReached,
)
from opsgate.providers.base import FinishReason
from opsgate.routing.errors import AllProvidersFailed, NoUsableAnswer
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.router import Attempt, Router

CHAIN = (
    Target("anthropic", "claude-opus-4-5"),
    Target("deepseek", "deepseek-chat"),
    Target("gemini", "gemini-2.0-flash"),
)


def policy(**changes: object) -> RoutePolicy:
    fields: dict[str, object] = dict(
        chain=CHAIN, timeout_s=20.0, max_attempts_per_target=3, max_retry_wait_s=30.0
    )
    fields.update(changes)
    return RoutePolicy(**fields)  # type: ignore[arg-type]


class Setup:
    def __init__(self, **scripts: list) -> None:
        self.clock = ManualClock()
        self.sleep = RecordingSleep(self.clock)
        self.providers = {
            name: ScriptedProvider(name, self.clock, list(scripts.get(name, [])))
            for name in ("anthropic", "deepseek", "gemini")
        }
        self.router = Router(
            self.providers, self.clock, self.sleep, failure_threshold=100, rand=lambda: 0.5
        )

    def calls(self, name: str) -> int:
        return len(self.providers[name].calls)


def kinds(attempts: list[Attempt]) -> list[tuple[str, str]]:
    return [(a.provider, a.outcome_kind) for a in attempts]


async def test_first_target_answers() -> None:
    s = Setup()
    routed = await s.router.complete(REQUEST, policy())
    assert routed.completion.provider == "anthropic"
    assert routed.attempts == [Attempt("anthropic", "claude-opus-4-5", "ok", 200, 0.0, 0.0)]
    assert s.providers["anthropic"].calls == [("claude-opus-4-5", 20.0)]


async def test_retry_honours_retry_after_exactly() -> None:
    s = Setup(anthropic=[RateLimited("anthropic", http_status=429, retry_after=7.0)])
    routed = await s.router.complete(REQUEST, policy())
    assert s.sleep.waits == [7.0]
    assert kinds(routed.attempts) == [("anthropic", "rate_limited"), ("anthropic", "ok")]
    assert routed.attempts[0].http_status == 429
    assert routed.attempts[1].waited_s == 7.0


async def test_retry_after_above_the_cap_skips_to_the_next_target_without_waiting() -> None:
    s = Setup(anthropic=[RateLimited("anthropic", http_status=429, retry_after=31.0)])
    routed = await s.router.complete(REQUEST, policy(max_retry_wait_s=30.0))
    assert s.sleep.waits == []
    assert kinds(routed.attempts) == [("anthropic", "rate_limited"), ("deepseek", "ok")]
    assert s.calls("anthropic") == 1


async def test_without_retry_after_waits_full_jitter_exponential_backoff() -> None:
    s = Setup(
        anthropic=[
            Overloaded("anthropic", http_status=529),
            ServerError("anthropic", http_status=500),
        ]
    )
    routed = await s.router.complete(REQUEST, policy())
    # rand() = 0.5: 0.5 x min(8, 0.25 x 2^0) then 0.5 x min(8, 0.25 x 2^1)
    assert s.sleep.waits == [0.125, 0.25]
    assert routed.completion.provider == "anthropic"


@pytest.mark.parametrize(
    "error",
    [
        Overloaded("anthropic", http_status=529),
        Overloaded("anthropic", http_status=503),
        ServerError("anthropic", http_status=500),
        ServerError("anthropic", http_status=502),
        ConnectionFailed("anthropic"),
        RateLimited("anthropic", http_status=429, retry_after=1.0),
    ],
    ids=lambda e: f"{e.kind}-{e.http_status}",
)
async def test_retryable_errors_are_retried_then_fall_back(error: Exception) -> None:
    s = Setup(anthropic=[error] * 3)
    routed = await s.router.complete(REQUEST, policy())
    assert s.calls("anthropic") == 3
    assert len(s.sleep.waits) == 2
    assert routed.completion.provider == "deepseek"
    assert [a.provider for a in routed.attempts] == ["anthropic"] * 3 + ["deepseek"]


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationFailed("anthropic", http_status=401),
        AuthenticationFailed("anthropic", http_status=403),
        BillingFailed("anthropic", http_status=402),
        SpendCapReached("anthropic", http_status=429),
        EmptyAnswer("anthropic", http_status=200),
    ],
    ids=lambda e: f"{e.kind}-{e.http_status}",
)
async def test_non_retryable_provider_faults_fall_back_at_once(error: Exception) -> None:
    s = Setup(anthropic=[error])
    routed = await s.router.complete(REQUEST, policy())
    assert s.calls("anthropic") == 1
    assert s.sleep.waits == []
    assert routed.completion.provider == "deepseek"


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_invalid_request_is_neither_retried_nor_falls_back(status: int) -> None:
    s = Setup(anthropic=[InvalidRequest("anthropic", http_status=status)])
    with pytest.raises(InvalidRequest) as info:
        await s.router.complete(REQUEST, policy())
    assert (s.calls("anthropic"), s.calls("deepseek"), s.sleep.waits) == (1, 0, [])
    assert kinds(info.value.attempts) == [("anthropic", "invalid_request")]


async def test_content_filtered_does_not_fall_back_by_default() -> None:
    s = Setup(anthropic=[ContentFiltered("anthropic", http_status=200)])
    with pytest.raises(ContentFiltered) as info:
        await s.router.complete(REQUEST, policy())
    assert s.calls("deepseek") == 0
    assert kinds(info.value.attempts) == [("anthropic", "content_filtered")]


async def test_content_filtered_falls_back_when_the_policy_asks() -> None:
    s = Setup(anthropic=[ContentFiltered("anthropic")])
    routed = await s.router.complete(REQUEST, policy(fallback_on_content_filter=True))
    assert kinds(routed.attempts) == [("anthropic", "content_filtered"), ("deepseek", "ok")]
    assert s.calls("anthropic") == 1


async def test_all_failing_raises_all_providers_failed_with_every_attempt() -> None:
    s = Setup(
        anthropic=[Overloaded("anthropic", http_status=529)] * 2,
        deepseek=[BillingFailed("deepseek", http_status=402)],
        gemini=[ServerError("gemini", http_status=503), ServerError("gemini", http_status=500)],
    )
    with pytest.raises(AllProvidersFailed) as info:
        await s.router.complete(REQUEST, policy(max_attempts_per_target=2))
    error = info.value
    assert (error.code, error.status) == ("provider_unavailable", 503)
    assert [(a.provider, a.outcome_kind, a.http_status) for a in error.attempts] == [
        ("anthropic", "overloaded", 529),
        ("anthropic", "overloaded", 529),
        ("deepseek", "billing_failed", 402),
        ("gemini", "server_error", 503),
        ("gemini", "server_error", 500),
    ]
    assert error.last_error is error.__cause__
    assert isinstance(error.last_error, ServerError) and error.last_error.http_status == 500


def cut(provider: str, raw: str = "max_tokens") -> IncompleteAnswer:
    return IncompleteAnswer(provider, FinishReason.LENGTH, raw)


@pytest.mark.parametrize(
    ("scripts", "detail"),
    [
        # each target answered, none usably (tester-wire F10: 503 "No AI provider could answer")
        ({"anthropic": [cut("anthropic")], "deepseek": [EmptyAnswer("deepseek", "no choices in the answer")],
          "gemini": [cut("gemini", "MAX_TOKENS")]},
         "the answer stopped before it was complete (MAX_TOKENS)"),
        # one answered unusably; the others were down: a provider did answer
        ({"anthropic": [MalformedResponse("anthropic", "usage is missing", http_status=200)],
          "deepseek": [BillingFailed("deepseek", http_status=402)],
          "gemini": [AuthenticationFailed("gemini", http_status=401)]},
         "usage is missing"),
    ],
)
async def test_a_chain_that_got_only_unusable_answers_is_a_bad_response_not_an_outage(
    scripts: dict[str, list], detail: str
) -> None:
    s = Setup(**scripts)
    with pytest.raises(NoUsableAnswer) as info:
        await s.router.complete(REQUEST, policy(max_attempts_per_target=3))
    error = info.value
    assert (error.code, error.status, error.title) == (
        "provider_bad_response", 502, "No AI provider gave a usable answer")
    assert error.detail == detail
    assert isinstance(error, AllProvidersFailed) and len(error.attempts) == 3
    assert error.last_error is error.__cause__ and error.last_error.provider == "gemini"
    # an unusable answer is not retried on the same target: one request each
    assert [s.calls(n) for n in ("anthropic", "deepseek", "gemini")] == [1, 1, 1]


async def test_a_cut_off_answer_falls_back_without_a_retry_and_keeps_breakers_closed() -> None:
    s = Setup(anthropic=[cut("anthropic")] * 6)
    # the request's output limit, not the model's health: with a threshold of 5 anthropic's
    # breaker stays closed after 6 cut-off answers in a row
    s.router = Router(s.providers, s.clock, s.sleep, failure_threshold=5, rand=lambda: 0.5)
    for _ in range(6):
        routed = await s.router.complete(REQUEST, policy())
        assert kinds(routed.attempts) == [("anthropic", "incomplete_answer"), ("deepseek", "ok")]
    assert (s.calls("anthropic"), s.calls("deepseek")) == (6, 6)


async def test_unconfigured_provider_is_skipped_and_recorded() -> None:
    s = Setup()
    del s.providers["anthropic"]
    router = Router(s.providers, s.clock, s.sleep)
    routed = await router.complete(REQUEST, policy())
    assert kinds(routed.attempts) == [("anthropic", "not_configured"), ("deepseek", "ok")]


async def test_slow_provider_is_cut_at_the_attempt_timeout() -> None:
    s = Setup()
    slow = s.providers["anthropic"]

    async def hang(request, model, timeout_s):
        slow.calls.append((model, timeout_s))
        await asyncio.sleep(10)

    slow.complete = hang  # type: ignore[method-assign]
    routed = await s.router.complete(REQUEST, policy(timeout_s=0.05, max_attempts_per_target=1))
    assert kinds(routed.attempts) == [("anthropic", "timeout"), ("deepseek", "ok")]
    assert slow.calls == [("claude-opus-4-5", 0.05)]


async def test_total_deadline_stops_the_chain() -> None:
    s = Setup(anthropic=[ServerError("anthropic", http_status=500)])
    s.providers["anthropic"].latency_s = 6.0
    with pytest.raises(AllProvidersFailed) as info:
        await s.router.complete(REQUEST, policy(total_timeout_s=5.0))
    assert kinds(info.value.attempts) == [
        ("anthropic", "server_error"),
        ("deepseek", "deadline_exceeded"),
    ]
    assert info.value.attempts[0].latency_ms == 6000.0
    assert s.calls("deepseek") == 0


async def test_attempt_timeout_shrinks_to_the_time_left() -> None:
    s = Setup(anthropic=[RateLimited("anthropic", http_status=429, retry_after=4.0)])
    await s.router.complete(REQUEST, policy(timeout_s=20.0, total_timeout_s=10.0))
    assert s.providers["anthropic"].calls == [("claude-opus-4-5", 10.0), ("claude-opus-4-5", 6.0)]


async def test_a_wait_longer_than_the_time_left_moves_on() -> None:
    s = Setup(anthropic=[RateLimited("anthropic", http_status=429, retry_after=12.0)])
    routed = await s.router.complete(REQUEST, policy(total_timeout_s=10.0))
    assert s.sleep.waits == []
    assert routed.completion.provider == "deepseek"


# ------------------------------------------- a hanging target leaves time for the fallbacks
# (tester B finding 3): a timeout is not retried on the same target while a later target of the
# chain can still be called; the last callable target still retries it within the deadline.


def hanging(s: Setup, name: str, timeout_s: float, times: int = 3) -> None:
    """``name`` takes the whole attempt timeout, then times out, ``times`` times."""
    s.providers[name].latency_s = timeout_s
    s.providers[name].script = [lambda: ProviderTimeout(name)] * times


async def test_a_hanging_primary_falls_back_at_once_and_the_fallback_gets_the_rest_of_the_deadline() -> None:
    s = Setup()
    hanging(s, "anthropic", 5.0)
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=10.0))
    assert kinds(routed.attempts) == [("anthropic", "timeout"), ("deepseek", "ok")]
    assert (s.calls("anthropic"), s.sleep.waits) == (1, [])
    assert s.providers["deepseek"].calls == [("deepseek-chat", 5.0)]  # what is left of the deadline


async def test_a_hanging_fallback_moves_on_too_and_the_last_target_retries_within_the_deadline() -> None:
    s = Setup(anthropic=[BillingFailed("anthropic", http_status=402)])
    hanging(s, "deepseek", 5.0)
    hanging(s, "gemini", 5.0, times=1)
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=30.0))
    assert kinds(routed.attempts) == [("anthropic", "billing_failed"), ("deepseek", "timeout"),
                                      ("gemini", "timeout"), ("gemini", "ok")]
    assert s.sleep.waits == [0.125]


async def test_a_timeout_is_retried_when_every_later_target_would_be_skipped() -> None:
    s = Setup()
    hanging(s, "anthropic", 5.0, times=1)
    del s.providers["gemini"]  # not configured
    router = Router(s.providers, s.clock, s.sleep, failure_threshold=100, rand=lambda: 0.5)
    router.breaker("deepseek").cool_down(60.0)  # open
    routed = await router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=10.0))
    assert kinds(routed.attempts) == [("anthropic", "timeout"), ("anthropic", "ok")]
    assert s.calls("deepseek") == 0


async def test_a_half_open_fallback_counts_as_callable_without_losing_its_trial() -> None:
    s = Setup()
    hanging(s, "anthropic", 5.0)
    s.router.breaker("deepseek").cool_down(1.0)
    s.clock.advance(1.0)
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=10.0))
    assert kinds(routed.attempts) == [("anthropic", "timeout"), ("deepseek", "ok")]


async def test_429_and_529_on_the_primary_are_still_retried_while_fallbacks_remain() -> None:
    s = Setup(anthropic=[RateLimited("anthropic", http_status=429, retry_after=2.0),
                         Overloaded("anthropic", http_status=529)])
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=10.0))
    assert kinds(routed.attempts) == [("anthropic", "rate_limited"), ("anthropic", "overloaded"),
                                      ("anthropic", "ok")]
    assert s.sleep.waits == [2.0, 0.25]


# ------------------------------------------- late failures leave time for the fallbacks too
# A failure that says the provider is not answering in time (408, 504) or that took at least
# half of its attempt's limit falls through like a timeout; fast failures keep their retries.


@pytest.mark.parametrize(
    "error",
    [
        ServerError("anthropic", "HTTP 504 timeout_error", http_status=504),
        ServerError("gemini", "HTTP 504 DEADLINE_EXCEEDED", http_status=504),
        ServerError("deepseek", "HTTP 408", http_status=408),
    ],
    ids=lambda e: f"{e.provider}-{e.http_status}",
)
async def test_a_provider_saying_it_did_not_answer_in_time_is_left_at_once(error: ServerError) -> None:
    s = Setup(anthropic=[error] * 3)
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=10.0))
    assert kinds(routed.attempts) == [("anthropic", "server_error"), ("deepseek", "ok")]
    assert (s.calls("anthropic"), s.sleep.waits) == (1, [])


async def test_a_slow_overload_falls_back_with_the_rest_of_the_deadline() -> None:
    """A 529 after 4 of the attempt's 5 s: retried in place, the deadline ran out and the
    fallbacks were recorded deadline_exceeded without a call."""
    s = Setup(anthropic=[Overloaded("anthropic", http_status=529)] * 3)
    s.providers["anthropic"].latency_s = 4.0
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=10.0))
    assert kinds(routed.attempts) == [("anthropic", "overloaded"), ("deepseek", "ok")]
    assert s.providers["deepseek"].calls == [("deepseek-chat", 5.0)]
    assert s.sleep.waits == []


@pytest.mark.parametrize(("latency_s", "attempts"), [(2.4, 2), (2.5, 1)])
async def test_a_failure_is_late_from_half_of_its_attempt_limit(latency_s: float, attempts: int) -> None:
    s = Setup(anthropic=[ServerError("anthropic", http_status=500)])
    s.providers["anthropic"].latency_s = latency_s
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=20.0))
    assert s.calls("anthropic") == attempts
    assert routed.completion.provider == ("anthropic" if attempts == 2 else "deepseek")


async def test_the_limit_a_failure_is_measured_against_shrinks_with_the_deadline() -> None:
    """After a 3 s wait, 3 s of the deadline are left: a 500 after 1.6 s is under half of
    timeout_s (5 s) but over half of the attempt's limit (3 s)."""
    s = Setup()

    def slow_500() -> ServerError:
        s.clock.advance(1.6)
        return ServerError("anthropic", http_status=500)

    s.providers["anthropic"].script = [RateLimited("anthropic", http_status=429, retry_after=3.0), slow_500]
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=6.0))
    assert kinds(routed.attempts) == [("anthropic", "rate_limited"), ("anthropic", "server_error"),
                                      ("deepseek", "ok")]
    assert s.providers["anthropic"].calls == [("claude-opus-4-5", 5.0), ("claude-opus-4-5", 3.0)]
    assert s.providers["deepseek"].calls == [("deepseek-chat", pytest.approx(1.4))]


async def test_the_last_callable_target_retries_its_late_failures_within_the_deadline() -> None:
    s = Setup(anthropic=[ServerError("anthropic", "HTTP 504 timeout_error", http_status=504)])
    s.providers["anthropic"].latency_s = 4.0
    routed = await s.router.complete(REQUEST, policy(chain=CHAIN[:1], timeout_s=5.0, total_timeout_s=10.0))
    assert kinds(routed.attempts) == [("anthropic", "server_error"), ("anthropic", "ok")]
    assert s.sleep.waits == [0.125]


# ----------------------- a failure after the provider's 200 is late: the provider may bill it
# A body cut after the 200 headers (ConnectionFailed with http_status 200) was retried in place
# like a refused connection: each retry a new possibly billed request (tester-wire F4).


def cut_200(provider: str) -> ConnectionFailed:
    return ConnectionFailed(provider, "answer cut (ClientPayloadError)", http_status=200)


async def test_a_body_cut_after_its_200_falls_back_at_once_unlike_a_refused_connection() -> None:
    s = Setup(anthropic=[cut_200("anthropic")] * 3)
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=20.0))
    assert kinds(routed.attempts) == [("anthropic", "connection_failed"), ("deepseek", "ok")]
    assert routed.attempts[0].http_status == 200
    assert (s.calls("anthropic"), s.calls("deepseek"), s.sleep.waits) == (1, 1, [])

    # a connection refused before any answer cannot have been billed: retried in place
    s = Setup(anthropic=[ConnectionFailed("anthropic", "transport failure (ClientConnectorError)")])
    routed = await s.router.complete(REQUEST, policy(timeout_s=5.0, total_timeout_s=20.0))
    assert kinds(routed.attempts) == [("anthropic", "connection_failed"), ("anthropic", "ok")]
    assert s.sleep.waits == [0.125]

    # the chain's last callable target retries a cut 200 within the deadline, as any late failure
    s = Setup(anthropic=[cut_200("anthropic")])
    routed = await s.router.complete(REQUEST, policy(chain=CHAIN[:1], timeout_s=5.0, total_timeout_s=20.0))
    assert kinds(routed.attempts) == [("anthropic", "connection_failed"), ("anthropic", "ok")]
