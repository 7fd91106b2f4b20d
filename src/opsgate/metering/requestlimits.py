"""Requests-per-minute limits that are exact: at most N admitted in any 60-second window.

Each limit keeps a log of the times of the requests it admitted (a moving window): a request is
admitted when, for every applicable scope, fewer than ``limit`` logged requests are younger than
60 s; it is then logged in every scope, all or none -- a request refused by one scope is counted
in no other. The wait for a refused request is the time until the logged request that must leave
(the oldest when the log is full) is 60 s old, rounded up to whole seconds (at least 1).

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


class RequestLog(Protocol):
    """Atomic check-and-log of one request over several scopes."""

    async def admit(self, scopes: Sequence[RequestScope]) -> RequestRefusal | None:
        """Log the request in every scope and return ``None``, or in none and return the
        :class:`RequestRefusal` of the first full scope."""


def _wait_s(leaves_in: float) -> int:
    """Whole seconds until a logged request ``leaves_in`` seconds from now is out of the window."""
    return max(1, math.ceil(leaves_in))


class MemoryRequestLog:
    """Request logs in this process's memory (``clock`` returns seconds, never going back)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, deque[float]] = {}

    async def admit(self, scopes: Sequence[RequestScope]) -> RequestRefusal | None:
        """See :meth:`RequestLog.admit`; no ``await`` between the check and the log."""
        now = self._clock()
        logs = []
        for scope in scopes:
            log = self._logs.setdefault(scope.key, deque())
            while log and log[0] <= now - WINDOW_S:
                log.popleft()
            if len(log) >= scope.limit:  # the entry that must leave for one more to fit
                return RequestRefusal(scope, _wait_s(log[len(log) - scope.limit] + WINDOW_S - now))
            logs.append(log)
        for log in logs:
            log.append(now)
        return None


_ADMIT = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local window = tonumber(ARGV[2])
local score = string.format('%.6f', now)
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.6f', now - window))
  local count = redis.call('ZCARD', KEYS[i])
  local limit = tonumber(ARGV[3 + i])
  if count >= limit then
    local leaving = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    return {i, string.format('%.6f', tonumber(leaving[2]) + window - now)}
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], score, ARGV[3])
  redis.call('PEXPIRE', KEYS[i], window * 1000)
end
return {0, '0'}
"""


class RedisRequestLog:
    """Request logs in Redis, shared by every replica (``redis_url``: ``redis://`` or
    ``rediss://``; ``prefix`` separates deployments). ``clock`` (seconds) replaces the Redis
    server's time, for tests. Redis errors propagate as ``redis.exceptions.RedisError``."""

    def __init__(self, redis_url: str, prefix: str, clock: Callable[[], float] | None = None) -> None:
        self._redis = aioredis.from_url(redis_url)
        self._prefix = prefix
        self._clock = clock
        self._admit = self._redis.register_script(_ADMIT)

    async def admit(self, scopes: Sequence[RequestScope]) -> RequestRefusal | None:
        """See :meth:`RequestLog.admit`: one Lua script checks and logs every scope."""
        now = "" if self._clock is None else repr(self._clock())
        keys = [f"{self._prefix}:rpm:{s.key}" for s in scopes]
        args: list[int | str] = [now, WINDOW_S, secrets.token_hex(8), *(s.limit for s in scopes)]
        refused, leaves_in = await self._admit(keys=keys, args=args)
        if refused:
            return RequestRefusal(scopes[int(refused) - 1], _wait_s(float(leaves_in)))
        return None

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
