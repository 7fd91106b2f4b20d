"""Requests-per-minute limits that are exact: at most N admitted in any 60-second window.

Each limit keeps a log of the times of the requests it admitted (a moving window): a request is
admitted when, for every applicable scope, fewer than ``limit`` logged requests are younger than
60 s; it is then logged in every scope, all or none -- a request refused by one scope is counted
in no other. The wait for a refused request is the time until the logged request that must leave
(the oldest when the log is full) is 60 s old, rounded up to whole seconds (at least 1). An
admitted request learns, in the same atomic step, what it left: the scope with the fewest places
left after it, and the whole seconds until that scope's oldest logged request leaves the window
(one more place frees) -- the ``r`` and ``t`` of the RateLimit field
(:mod:`opsgate.metering.ratelimit`).

A log holds at most ``limit`` times per scope, so the memory is bounded by the limits, not by the
traffic. (The sliding window *counter* this replaced, ``limits``' ``SlidingWindowCounterRateLimiter``,
weighted the previous fixed minute by the fraction of it still in the window and admitted 5
requests within 49 s against a limit of 3 when the previous minute's requests fell early in it.)

- :class:`MemoryRequestLog`: one process; check-and-log has no ``await`` in between, so it is
  atomic on the event loop. ``clock`` defaults to ``time.monotonic``.
- :class:`RedisRequestLog`: every replica; one Lua script checks and logs every scope (one round
  trip per request, atomic in Redis). The time is the Redis server's (``TIME``), so replicas with
  skewed clocks still share one window; tests may pass a ``clock`` instead.

Redis keys: ``<prefix>:rpm:<scope>``, a sorted set of request ids scored by their time in
seconds, expiring 60 s after its newest entry. ``scope`` is ``user:<id>`` or
``user-op:<id>:<operation>``.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class RequestScope:
    """One applicable request limit: its log ``key``, ``limit`` in requests per 60 s, the
    ``policy`` name of the RateLimit header fields and a human ``label`` for the 429 detail."""

    key: str
    limit: int
    policy: str
    label: str


@dataclass(frozen=True, slots=True)
class RequestRefusal:
    """The first scope whose log is full, and the whole seconds (>= 1) until it has room."""

    scope: RequestScope
    retry_after_s: int


@dataclass(slots=True)  # not frozen: one per admitted request, and a frozen __init__ costs twice
class RequestQuota:
    """What an admitted request left: the ``scope`` with the fewest places left after it (on a
    tie, the one whose place frees last), its ``remaining`` places (>= 0) in the 60-second
    window, and ``reset_s``: whole seconds (>= 1) until that scope's oldest logged request leaves
    the window, so one more place frees (60 when this request is the only one logged)."""

    scope: RequestScope
    remaining: int
    reset_s: int


class RequestLog(Protocol):
    """Atomic check-and-log of one request over several scopes."""

    async def admit(self, scopes: Sequence[RequestScope], log: bool = True) -> RequestQuota | RequestRefusal:
        """Log the request in every scope (at least one) and return its :class:`RequestQuota`,
        or in none and return the :class:`RequestRefusal` of the first full scope. With ``log``
        False nothing is logged: the answer is what logging would have answered (a check)."""


def _wait_s(leaves_in: float) -> int:
    """Whole seconds until a logged request ``leaves_in`` seconds from now is out of the window.
    Callers compute ``leaves_in`` as ``WINDOW_S - (now - logged)``: the difference of two close
    times is exact, so a request logged now leaves in exactly 60 s (``logged + 60 - now`` can
    round to 60.00000000001 and report 61)."""
    return math.ceil(leaves_in) if leaves_in > 1 else 1  # max(1, ceil(...)) without a call


class MemoryRequestLog:
    """Request logs in this process's memory (``clock`` returns seconds, never going back) over a
    moving window of ``window_s`` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: int = WINDOW_S) -> None:
        self._clock = clock
        self._window = window_s
        self._logs: dict[str, deque[float]] = {}

    async def admit(self, scopes: Sequence[RequestScope], log: bool = True) -> RequestQuota | RequestRefusal:
        """See :meth:`RequestLog.admit`; no ``await`` between the check and the log."""
        now, window = self._clock(), self._window
        logs = []
        fewest, left, oldest = scopes[0], scopes[0].limit, now  # beaten by the first scope
        for scope in scopes:
            entries = self._logs.setdefault(scope.key, deque())
            while entries and entries[0] <= now - window:
                entries.popleft()
            if len(entries) >= scope.limit:
                leaving = entries[len(entries) - scope.limit]  # the entry that must leave for one more
                return RequestRefusal(scope, _wait_s(window - (now - leaving)))
            logs.append(entries)
            places, first = scope.limit - len(entries) - 1, entries[0] if entries else now
            if places < left or (places == left and first > oldest):
                fewest, left, oldest = scope, places, first
        if log:
            for entries in logs:
                entries.append(now)
        return RequestQuota(fewest, left, _wait_s(window - (now - oldest)))


# The head of a Lua script over logs of one window: ``now`` (ARGV[1], or the Redis server's TIME
# when it is empty) as ``score``, the time as logged with 6 decimals, and ``window`` (ARGV[2], s).
LUA_NOW = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local window = tonumber(ARGV[2])
local score = string.format('%.6f', now)
now = tonumber(score)  -- the time as logged: an entry logged now is exactly 0 s old
"""

_ADMIT = LUA_NOW + """
local fewest, left, leaves = 0, 0, 0
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.6f', now - window))
  local count = redis.call('ZCARD', KEYS[i])
  local limit = tonumber(ARGV[3 + i])
  if count >= limit then
    local leaving = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    return {0, i, 0, string.format('%.6f', window - (now - tonumber(leaving[2])))}
  end
  local places, oldest = limit - count - 1, now
  if count > 0 then
    oldest = tonumber(redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2])
  end
  local frees = window - (now - oldest)
  if fewest == 0 or places < left or (places == left and frees > leaves) then
    fewest, left, leaves = i, places, frees
  end
end
for i = 1, #KEYS do
  if ARGV[3] ~= '' then  -- an empty request id: a check, nothing logged
    redis.call('ZADD', KEYS[i], score, ARGV[3])
    redis.call('PEXPIRE', KEYS[i], window * 1000)
  end
end
return {1, fewest, left, string.format('%.6f', leaves)}
"""


class RedisRequestLog:
    """Request logs in Redis, shared by every replica (``redis_url``: ``redis://`` or
    ``rediss://``; ``prefix`` separates deployments), over a moving window of ``window_s`` seconds.
    ``clock`` (seconds) replaces the Redis server's time, for tests. Redis errors propagate as
    ``redis.exceptions.RedisError``."""

    def __init__(self, redis_url: str, prefix: str, clock: Callable[[], float] | None = None,
                 window_s: int = WINDOW_S) -> None:
        self._redis = aioredis.from_url(redis_url)
        self._prefix = prefix
        self._clock = clock
        self._window = window_s
        self._admit = self._redis.register_script(_ADMIT)

    async def admit(self, scopes: Sequence[RequestScope], log: bool = True) -> RequestQuota | RequestRefusal:
        """See :meth:`RequestLog.admit`: one Lua script checks and logs every scope and answers
        ``[admitted (1/0), scope index (from 1), places left, seconds until one frees]``."""
        now = "" if self._clock is None else repr(self._clock())
        keys = [f"{self._prefix}:rpm:{s.key}" for s in scopes]
        args: list[int | str] = [now, self._window, secrets.token_hex(8) if log else "", *(s.limit for s in scopes)]
        admitted, index, left, leaves_in = await self._admit(keys=keys, args=args)
        scope, wait = scopes[int(index) - 1], _wait_s(float(leaves_in))
        return RequestQuota(scope, int(left), wait) if admitted else RequestRefusal(scope, wait)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
