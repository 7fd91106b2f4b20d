"""Tokens-per-minute limits that hold under concurrency: reserve the worst case, settle the actual.

A call takes its worst-case tokens (:func:`~opsgate.metering.worstcase.call_worst_case_tokens`)
from every applicable window *at admission*, atomically and all-or-nothing, and is refused (429)
when one of them has no room; when it ends, the hold is settled to the tokens it was billed
(``Usage.total_tokens``), returning the rest -- as budgets reserve and settle money. So N
concurrent calls can never take more than the limit between them, whatever their timing.

The window is a sliding window counter of one minute (the algorithm of ``limits``' sliding window
counter and of Cloudflare's rate limiter): a counter per fixed minute, and the tokens used "in the
last 60 s" are ``floor(previous * (1 - elapsed)) + current`` where ``elapsed`` is the fraction of
the current minute gone. ``limits`` cannot return part of a hit to the window it was taken from,
so the counters are our own:

- :class:`MemoryTokenWindows`: one process; check-and-take runs without an ``await`` in between,
  so it is atomic on the event loop.
- :class:`RedisTokenWindows`: every replica; check-and-take of all scopes is one Lua script
  (atomic in Redis), and a settlement adds ``actual - reserved`` to the counter of the minute the
  hold was taken in (floored at 0, its TTL kept).

Keys: ``<prefix>:tpm:<scope>:<minute number>`` where ``scope`` is ``user:<id>`` or
``user-op:<id>:<operation>``; counters expire two minutes after their minute began.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class TokenScope:
    """One applicable limit: its counter ``key`` (without the minute), ``limit`` in tokens per
    minute and a human ``label`` for the 429 detail."""

    key: str
    limit: int
    label: str


@dataclass(frozen=True, slots=True)
class TokenHold:
    """Tokens a call holds: ``amount`` taken from ``scopes`` in minute number ``minute``."""

    scopes: tuple[TokenScope, ...]
    minute: int
    amount: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """The first scope with no room, and the seconds until it has room for the amount asked."""

    scope: TokenScope
    retry_after_s: int


class TokenWindows(Protocol):
    """Atomic check-and-take over several windows, and settlement of a hold."""

    async def take(self, scopes: Sequence[TokenScope], amount: int) -> TokenHold | Refusal:
        """Take ``amount`` from every scope, or from none and return the :class:`Refusal`."""

    async def settle(self, hold: TokenHold, actual: int) -> None:
        """Change the hold's counters by ``actual - hold.amount`` (floored at 0)."""


def _minute(now: float) -> tuple[int, float]:
    """The minute number of ``now`` (Unix seconds) and the fraction of it elapsed."""
    minute, into = divmod(now, WINDOW_S)
    return int(minute), into / WINDOW_S


def _wait_s(previous: int, current: int, amount: int, limit: int, elapsed: float) -> int:
    """Seconds until ``floor(previous * (1 - e)) + current + amount <= limit`` as time passes
    (``current`` becomes the previous minute at the next boundary). At least 1."""
    room = limit - current - amount
    if room >= 0 and previous:
        at = 1 - room / previous  # the elapsed fraction at which the previous minute weighs little enough
        return max(1, math.ceil((at - elapsed) * WINDOW_S))
    room_next = limit - amount
    at_next = 1 - room_next / current if current else 0.0
    return max(1, math.ceil((1 - elapsed + max(0.0, at_next)) * WINDOW_S))


class MemoryTokenWindows:
    """Token windows in this process's memory (``clock`` returns Unix seconds)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[tuple[str, int], int] = {}

    async def take(self, scopes: Sequence[TokenScope], amount: int) -> TokenHold | Refusal:
        """See :meth:`TokenWindows.take`; no ``await`` between the check and the take."""
        minute, elapsed = _minute(self._clock())
        self._drop_before(minute - 1)
        for scope in scopes:
            previous = self._counts.get((scope.key, minute - 1), 0)
            current = self._counts.get((scope.key, minute), 0)
            if math.floor(previous * (1 - elapsed)) + current + amount > scope.limit:
                return Refusal(scope, _wait_s(previous, current, amount, scope.limit, elapsed))
        for scope in scopes:
            self._counts[(scope.key, minute)] = self._counts.get((scope.key, minute), 0) + amount
        return TokenHold(tuple(scopes), minute, amount)

    async def settle(self, hold: TokenHold, actual: int) -> None:
        """See :meth:`TokenWindows.settle`; a minute already dropped stays dropped."""
        for scope in hold.scopes:
            key = (scope.key, hold.minute)
            if key in self._counts:
                self._counts[key] = max(0, self._counts[key] + actual - hold.amount)

    def _drop_before(self, minute: int) -> None:
        for key in [k for k in self._counts if k[1] < minute]:
            del self._counts[key]


_TAKE = """
local amount = tonumber(ARGV[1])
local weight = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])
local n = #KEYS / 2
for i = 1, n do
  local previous = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local current = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  if math.floor(previous * weight) + current + amount > tonumber(ARGV[3 + i]) then
    return {i, previous, current}
  end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[2 * i], amount)
  if redis.call('PTTL', KEYS[2 * i]) < 0 then
    redis.call('PEXPIRE', KEYS[2 * i], ttl_ms)
  end
end
return {0, 0, 0}
"""

_SETTLE = """
local delta = tonumber(ARGV[1])
for i = 1, #KEYS do
  local value = redis.call('GET', KEYS[i])
  if value then
    local settled = tonumber(value) + delta
    if settled < 0 then settled = 0 end
    redis.call('SET', KEYS[i], settled, 'KEEPTTL')
  end
end
return 0
"""


class RedisTokenWindows:
    """Token windows in Redis, shared by every replica (``redis_url``: ``redis://`` or
    ``rediss://``; ``prefix`` separates deployments). Redis errors propagate as
    ``redis.exceptions.RedisError``."""

    def __init__(self, redis_url: str, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._redis = aioredis.from_url(redis_url)
        self._prefix = prefix
        self._clock = clock
        self._take = self._redis.register_script(_TAKE)
        self._settle = self._redis.register_script(_SETTLE)

    async def take(self, scopes: Sequence[TokenScope], amount: int) -> TokenHold | Refusal:
        """See :meth:`TokenWindows.take`: one Lua script checks and takes every scope."""
        minute, elapsed = _minute(self._clock())
        keys = [k for s in scopes for k in (self._key(s, minute - 1), self._key(s, minute))]
        args: list[int | str] = [amount, repr(1 - elapsed), 2 * WINDOW_S * 1000, *(s.limit for s in scopes)]
        refused, previous, current = await self._take(keys=keys, args=args)
        if refused:
            scope = scopes[int(refused) - 1]
            return Refusal(scope, _wait_s(int(previous), int(current), amount, scope.limit, elapsed))
        return TokenHold(tuple(scopes), minute, amount)

    async def settle(self, hold: TokenHold, actual: int) -> None:
        """See :meth:`TokenWindows.settle`."""
        keys = [self._key(s, hold.minute) for s in hold.scopes]
        await self._settle(keys=keys, args=[actual - hold.amount])

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def _key(self, scope: TokenScope, minute: int) -> str:
        return f"{self._prefix}:tpm:{scope.key}:{minute}"
