"""Request limits are exact: at most N admitted in any 60-second window (tester report F5).

On a fake clock, in memory and in Redis (127.0.0.1:6379, a unique key prefix per test): the
tester's sequence (one call a second against 3 per minute), all-or-none across the user and the
(user, operation) limits, 50 concurrent requests against a limit of 3, and two limiter instances
(two replicas) sharing one Redis on the Redis server's own clock; and the RateLimit fields an
admitted request carries (the fewest places left and the seconds until one more frees), which each
store computes in the admitting step itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from tests.limitstores import REDIS_URL, FakeClock, redis_prefix

from opsgate.metering.errors import RateLimitExceeded
from opsgate.metering.ratelimit import RateLimiter, RateLimits
from opsgate.metering.requestlimits import MemoryRequestLog, RedisRequestLog, RequestLog
from opsgate.problems import problem_response

T0 = 1_000_000.25  # a start time whose sums with whole and half seconds are exact in binary


MakeLog = Callable[[Callable[[], float] | None], RequestLog]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_log(request: pytest.FixtureRequest) -> AsyncIterator[MakeLog]:
    """A factory of request logs on one store; every Redis log of one test shares a fresh prefix
    (so two of them are two replicas) and its keys are deleted afterwards."""
    async with redis_prefix() as (prefix, made):

        def make(clock: Callable[[], float] | None) -> RequestLog:
            if request.param == "memory":
                return MemoryRequestLog(clock) if clock is not None else MemoryRequestLog()
            made.append(RedisRequestLog(REDIS_URL, prefix, clock))
            return made[-1]

        yield make


async def _outcome(limiter: RateLimiter, user: str, operation: str) -> int | None:
    """None when admitted, else the refusal's Retry-After in seconds."""
    try:
        await limiter.admit(user, operation)
    except RateLimitExceeded as refused:
        return int(refused.retry_after)
    return None


async def test_the_testers_sequence_admits_three_in_any_minute(make_log: MakeLog) -> None:
    clock = FakeClock(T0)
    limiter = RateLimiter(RateLimits(user_rpm=5, user_operation_rpm=3), make_log(clock))
    outcomes = {}
    for second in range(71):  # one call a second for 70 s, as the tester did
        clock.now = T0 + second
        outcomes[second] = await _outcome(limiter, "alice", "task-prioritize")
    admitted = [s for s, wait in outcomes.items() if wait is None]
    assert admitted == [0, 1, 2, 60, 61, 62]  # the sliding-window counter admitted 5 in 49 s
    assert outcomes[3] == 57 and outcomes[30] == 30 and outcomes[59] == 1  # until 0 s is 60 s old
    assert outcomes[63] == 57


async def test_a_request_leaves_the_window_exactly_60_s_after_it_was_admitted(make_log: MakeLog) -> None:
    clock = FakeClock(T0)
    limiter = RateLimiter(RateLimits(user_rpm=1), make_log(clock))
    await limiter.admit("alice", "email-classify")
    clock.now = T0 + 59.5
    assert await _outcome(limiter, "alice", "email-classify") == 1  # 0.5 s left, rounded up
    clock.now = T0 + 60
    assert await _outcome(limiter, "alice", "email-classify") is None


async def test_a_request_refused_by_one_limit_is_counted_in_no_other(make_log: MakeLog) -> None:
    clock = FakeClock(T0)
    limiter = RateLimiter(RateLimits(user_rpm=2, user_operation_rpm=2), make_log(clock))
    await limiter.admit("alice", "email-classify")
    await limiter.admit("alice", "email-classify")
    clock.now = T0 + 1
    for _ in range(5):  # refused by the user limit: not logged for (alice, task-breakdown)
        assert await _outcome(limiter, "alice", "task-breakdown") == 59
    clock.now = T0 + 60.5  # the two classify calls have left; the refused ones were never there
    assert [await _outcome(limiter, "alice", "task-breakdown") for _ in range(3)] == [None, None, 60]
    clock.now = T0 + 61.5
    for _ in range(4):  # refused by the pair limit: not logged for alice as a whole
        assert await _outcome(limiter, "alice", "task-breakdown") == 59
    clock.now = T0 + 120.5  # both task-breakdown calls have left
    assert await _outcome(limiter, "alice", "email-compose") is None
    assert await _outcome(limiter, "alice", "email-compose") is None


async def test_fifty_concurrent_requests_against_a_limit_of_three_admit_three(make_log: MakeLog) -> None:
    clock = FakeClock(T0)
    limiter = RateLimiter(RateLimits(user_rpm=3, user_operation_rpm=2), make_log(clock))
    operations = ["email-classify", "task-breakdown"]
    outcomes = await asyncio.gather(*(_outcome(limiter, "alice", operations[i % 2]) for i in range(50)))
    assert outcomes.count(None) == 3
    assert sorted({wait for wait in outcomes if wait is not None}) == [60]
    clock.now = T0 + 60  # all three have left together: exactly three places again
    again = await asyncio.gather(*(_outcome(limiter, "alice", "task-breakdown") for _ in range(10)))
    assert again.count(None) == 2  # the pair limit (2) is the tighter one now


async def test_concurrent_requests_refused_by_the_pair_limit_leave_the_user_limit_alone(
        make_log: MakeLog) -> None:
    # The old test-then-hit sequence let all 50 pass the pair test, then counted 10 of them in the
    # user limit before 8 of those lost the pair's last places: 2 admitted, the user limit full.
    clock = FakeClock(T0)
    limiter = RateLimiter(RateLimits(user_rpm=10, user_operation_rpm=2), make_log(clock))
    outcomes = await asyncio.gather(*(_outcome(limiter, "alice", "email-classify") for _ in range(50)))
    assert outcomes.count(None) == 2
    others = [await _outcome(limiter, "alice", f"op-{i}") for i in range(9)]
    assert others == [None] * 8 + [60]  # 2 + 8 = the user's 10


@pytest.mark.parametrize("make_log", [pytest.param("redis", marks=pytest.mark.redis)], indirect=True)
async def test_two_replicas_sharing_redis_admit_three_between_them(make_log: MakeLog) -> None:
    limits = RateLimits(user_operation_rpm=3)
    replicas = [RateLimiter(limits, make_log(None)), RateLimiter(limits, make_log(None))]  # Redis time
    outcomes = await asyncio.gather(*(_outcome(replicas[i % 2], "alice", "email-classify")
                                      for i in range(50)))
    assert outcomes.count(None) == 3
    assert all(wait is not None and 1 <= wait <= 60 for wait in outcomes if wait is not None)


async def test_a_refusal_carries_the_ratelimit_fields_and_retry_after() -> None:
    clock = FakeClock(T0)
    limiter = RateLimiter(RateLimits(user_rpm=5, user_operation_rpm=1), MemoryRequestLog(clock))
    await limiter.admit("alice", "email-classify")
    clock.now = T0 + 23
    with pytest.raises(RateLimitExceeded) as info:
        await limiter.admit("alice", "email-classify")
    response = problem_response(info.value, "req-1")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "37"
    assert response.headers["RateLimit-Policy"] == '"per-user";q=5;w=60, "per-user-operation";q=1;w=60'
    assert response.headers["RateLimit"] == '"per-user-operation";r=0;t=37'
    assert "1 requests per minute per user and operation" in info.value.detail


async def _ratelimit(limiter: RateLimiter, operation: str) -> str:
    """The ``RateLimit`` field of alice's next ``operation`` request, admitted or refused."""
    try:
        fields = await limiter.admit("alice", operation)
    except RateLimitExceeded as refused:
        fields = refused.response_headers
    return fields["RateLimit"]


async def test_an_admitted_request_carries_the_places_left_and_the_seconds_until_one_frees(
        make_log: MakeLog) -> None:
    clock = FakeClock(T0)
    limiter = RateLimiter(RateLimits(user_operation_rpm=3), make_log(clock))
    fields = await limiter.admit("alice", "email-classify")
    assert fields == {"RateLimit-Policy": '"per-user-operation";q=3;w=60',
                      "RateLimit": '"per-user-operation";r=2;t=60'}  # the only one: leaves in 60 s
    seen = {}
    for at in (10, 20.5, 30, 60, 61):
        clock.now = T0 + at
        seen[at] = await _ratelimit(limiter, "email-classify")
    assert seen == {10: '"per-user-operation";r=1;t=50',  # the request of 0 s leaves at 60 s
                    20.5: '"per-user-operation";r=0;t=40',  # 39.5 s, rounded up
                    30: '"per-user-operation";r=0;t=30',  # refused: t = Retry-After
                    60: '"per-user-operation";r=0;t=10',  # 0 s has left; 10 s is the oldest now
                    61: '"per-user-operation";r=0;t=9'}


async def test_the_field_names_the_policy_with_the_fewest_places_and_on_a_tie_the_later_one(
        make_log: MakeLog) -> None:
    clock = FakeClock(T0)
    limiter = RateLimiter(RateLimits(user_rpm=3, user_operation_rpm=2), make_log(clock))
    assert await _ratelimit(limiter, "email-classify") == '"per-user-operation";r=1;t=60'
    clock.now = T0 + 10  # 1 left in both: the user's frees at 60 s, task-breakdown's at 70 s
    assert await _ratelimit(limiter, "task-breakdown") == '"per-user-operation";r=1;t=60'
    clock.now = T0 + 20  # none left in both: the user has room at 60 s, task-breakdown at 70 s
    assert await _ratelimit(limiter, "task-breakdown") == '"per-user-operation";r=0;t=50'
    clock.now = T0 + 65  # the user has room again, task-breakdown not: t=50 above was the truth
    assert await _outcome(limiter, "alice", "task-breakdown") == 5
    assert await _ratelimit(limiter, "email-compose") == '"per-user";r=0;t=5'


async def test_a_request_logged_now_leaves_in_exactly_60_s_whatever_the_clock_reads(
        make_log: MakeLog) -> None:
    clock = FakeClock(T0)
    clock.now = 8161.962517661547  # 8161.962517661547 + 60 - 8161.962517661547 > 60
    limiter = RateLimiter(RateLimits(user_rpm=1), make_log(clock))
    assert await _ratelimit(limiter, "email-classify") == '"per-user";r=0;t=60'
    assert await _outcome(limiter, "alice", "email-classify") == 60  # was 61 in memory


async def test_no_request_limit_gives_no_fields(make_log: MakeLog) -> None:
    limiter = RateLimiter(RateLimits(user_tpm=1000, user_operation_tpm=500), make_log(FakeClock(T0)))
    assert await limiter.admit("alice", "email-classify") == {}


async def test_an_unreachable_redis_admits_and_logs_an_error(caplog: pytest.LogCaptureFixture) -> None:
    log = RedisRequestLog("redis://127.0.0.1:1/0", f"opsgate-test-{uuid.uuid4().hex}")  # nothing listens
    limiter = RateLimiter(RateLimits(user_rpm=1), log)
    outcomes = [await limiter.admit("alice", "email-classify") for _ in range(3)]
    await log.close()
    assert outcomes == [{}, {}, {}]  # fails open (the budget, not the rate limit, guards money),
    # without RateLimit fields: nothing is known about the quota
    assert caplog.messages.count("rate-limit storage unreachable; admitting without a request limit") == 3
