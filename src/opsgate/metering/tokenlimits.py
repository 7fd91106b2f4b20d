"""Tokens-per-minute limits that are exact and hold under concurrency: at most N tokens in any
60-second window, reserved at admission and settled to what was billed.

A call takes its worst-case tokens (:func:`~opsgate.metering.worstcase.call_worst_case_tokens`)
from every applicable limit *at admission*, atomically and all or none, and is refused (429) when
one of them has no room; when it ends, the hold is settled to the tokens it was billed
(``Usage.total_tokens``), returning the rest -- as budgets reserve and settle money. So N
concurrent calls can never take more than the limit between them, whatever their timing.

Each limit keeps a log of the holds it admitted (a moving window, as the request limits of
:mod:`opsgate.metering.requestlimits`): the hold's time, its id and its amount, with the sum of
the amounts younger than 60 s kept beside it. A call is admitted when ``sum + amount <= limit``
in every scope; a hold leaves the window 60 s after it was taken. The wait for a refused call is
the time until enough of the oldest holds have left for it to fit, rounded up to whole seconds
(at least 1). (The sliding window *counter* this replaced weighted the previous fixed minute as if
its tokens were spread evenly, so a burst late in one minute and another early in the next could
take up to 1.5x the limit within 60 s.)

- :class:`MemoryTokenWindows`: one process; check-and-take has no ``await`` in between, so it is
  atomic on the event loop. ``clock`` defaults to ``time.monotonic``.
- :class:`RedisTokenWindows`: every replica; one Lua script checks and takes every scope (one
  round trip), on the Redis server's clock (``TIME``) so replicas with skewed clocks share one
  window; a settlement is one script that changes the hold's amount and the sum.

Redis keys per scope: ``<prefix>:tpm:<scope>``, a sorted set of hold ids scored by their time in
seconds, and ``<prefix>:tpm:<scope>:held``, a hash of hold id -> tokens with the sum under
``=total``; both expire 60 s after the newest hold. ``scope`` is ``user:<id>`` or
``user-op:<id>:<operation>``.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis

from opsgate.metering.requestlimits import LUA_NOW

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class TokenScope:
    """One applicable limit: its log ``key``, ``limit`` in tokens per 60 s and a human ``label``
    for the 429 detail."""

    key: str
    limit: int
    label: str


@dataclass(frozen=True, slots=True)
class TokenHold:
    """Tokens a call holds: ``amount`` logged as ``hold_id`` in every one of ``scopes``."""

    scopes: tuple[TokenScope, ...]
    hold_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """The first scope with no room, and the whole seconds (>= 1) until it has room for the
    amount asked."""

    scope: TokenScope
    retry_after_s: int


class TokenWindows(Protocol):
    """Atomic check-and-take over several windows, and settlement of a hold."""

    async def take(self, scopes: Sequence[TokenScope], amount: int) -> TokenHold | Refusal:
        """Take ``amount`` from every scope, or from none and return the :class:`Refusal`."""

    async def settle(self, hold: TokenHold, actual: int) -> None:
        """Make the hold ``actual`` tokens in every scope still holding it (a hold older than the
        window has left it already)."""


def _wait_s(leaves_in: float) -> int:
    """Whole seconds until a hold ``leaves_in`` seconds from now is out of the window."""
    return max(1, math.ceil(leaves_in))


@dataclass(slots=True)
class _Log:
    """One scope's holds younger than the window, oldest first: id -> (time, tokens); and their
    sum. A hold is a tuple, replaced when settled (a dict keeps the key's place): a tuple of
    numbers is untracked by the garbage collector after its first collection, where a list
    stays tracked, and a minute of holds at ~1,000 calls/s kept ~100,000 lists in every full
    collection (issue 21)."""

    holds: dict[str, tuple[float, int]] = field(default_factory=dict)
    total: int = 0

    def prune(self, now: float) -> None:
        while self.holds:
            hold_id, (at, tokens) = next(iter(self.holds.items()))
            if at > now - WINDOW_S:
                return
            del self.holds[hold_id]
            self.total -= tokens

    def room_in(self, amount: int, limit: int, now: float) -> float:
        """Seconds until ``amount`` fits (0 when it fits now)."""
        left = self.total
        if left + amount <= limit:
            return 0.0
        for at, tokens in self.holds.values():
            left -= tokens
            if left + amount <= limit:
                return WINDOW_S - (now - at)
        return float(WINDOW_S)


class MemoryTokenWindows:
    """Token logs in this process's memory (``clock`` returns seconds, never going back)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._ids = itertools.count(1)

    async def take(self, scopes: Sequence[TokenScope], amount: int) -> TokenHold | Refusal:
        """See :meth:`TokenWindows.take`; no ``await`` between the check and the take."""
        now = self._clock()
        logs = []
        for scope in scopes:
            log = self._logs.setdefault(scope.key, _Log())
            log.prune(now)
            wait = log.room_in(amount, scope.limit, now)
            if wait:
                return Refusal(scope, _wait_s(wait))
            logs.append(log)
        hold_id = str(next(self._ids))
        for log in logs:
            log.holds[hold_id] = (now, amount)
            log.total += amount
        return TokenHold(tuple(scopes), hold_id, amount)

    async def settle(self, hold: TokenHold, actual: int) -> None:
        """See :meth:`TokenWindows.settle`."""
        for scope in hold.scopes:
            log = self._logs.get(scope.key)
            entry = log.holds.get(hold.hold_id) if log else None
            if log and entry:
                log.total += actual - entry[1]
                log.holds[hold.hold_id] = (entry[0], actual)


_TAKE = LUA_NOW + """
local amount = tonumber(ARGV[4])
local oldest = string.format('%.6f', now - window)
local n = #KEYS / 2
for i = 1, n do
  local log, held = KEYS[2 * i - 1], KEYS[2 * i]
  local gone = redis.call('ZRANGEBYSCORE', log, '-inf', oldest)
  if #gone > 0 then
    local freed = 0
    for _, id in ipairs(gone) do
      freed = freed + tonumber(redis.call('HGET', held, id) or '0')
      redis.call('HDEL', held, id)
    end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', oldest)
    redis.call('HINCRBY', held, '=total', -freed)
  end
  local left = tonumber(redis.call('HGET', held, '=total') or '0')
  local limit = tonumber(ARGV[4 + i])
  if left + amount > limit then
    local holds = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
    for j = 1, #holds, 2 do
      left = left - tonumber(redis.call('HGET', held, holds[j]) or '0')
      if left + amount <= limit then
        return {i, string.format('%.6f', window - (now - tonumber(holds[j + 1])))}
      end
    end
    return {i, string.format('%.6f', window)}
  end
end
for i = 1, n do
  redis.call('ZADD', KEYS[2 * i - 1], score, ARGV[3])
  redis.call('HSET', KEYS[2 * i], ARGV[3], amount)
  redis.call('HINCRBY', KEYS[2 * i], '=total', amount)
  redis.call('PEXPIRE', KEYS[2 * i - 1], window * 1000)
  redis.call('PEXPIRE', KEYS[2 * i], window * 1000)
end
return {0, '0'}
"""

_SETTLE = """
local actual = tonumber(ARGV[2])
for i = 1, #KEYS do
  local held = redis.call('HGET', KEYS[i], ARGV[1])
  if held then
    redis.call('HSET', KEYS[i], ARGV[1], actual)
    redis.call('HINCRBY', KEYS[i], '=total', actual - tonumber(held))
  end
end
return 0
"""


class RedisTokenWindows:
    """Token logs in Redis, shared by every replica (``redis_url``: ``redis://`` or
    ``rediss://``; ``prefix`` separates deployments). ``clock`` (seconds) replaces the Redis
    server's time, for tests. Redis errors propagate as ``redis.exceptions.RedisError``."""

    def __init__(self, redis_url: str, prefix: str, clock: Callable[[], float] | None = None) -> None:
        self._redis = aioredis.from_url(redis_url)
        self._prefix = prefix
        self._clock = clock
        self._take = self._redis.register_script(_TAKE)
        self._settle = self._redis.register_script(_SETTLE)

    async def take(self, scopes: Sequence[TokenScope], amount: int) -> TokenHold | Refusal:
        """See :meth:`TokenWindows.take`: one Lua script checks and takes every scope."""
        now = "" if self._clock is None else repr(self._clock())
        hold_id = secrets.token_hex(8)
        keys = [k for s in scopes for k in (self._key(s), f"{self._key(s)}:held")]
        args: list[int | str] = [now, WINDOW_S, hold_id, amount, *(s.limit for s in scopes)]
        refused, leaves_in = await self._take(keys=keys, args=args)
        if refused:
            return Refusal(scopes[int(refused) - 1], _wait_s(float(leaves_in)))
        return TokenHold(tuple(scopes), hold_id, amount)

    async def settle(self, hold: TokenHold, actual: int) -> None:
        """See :meth:`TokenWindows.settle`: one Lua script over every scope."""
        keys = [f"{self._key(s)}:held" for s in hold.scopes]
        await self._settle(keys=keys, args=[hold.hold_id, actual])

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def _key(self, scope: TokenScope) -> str:
        return f"{self._prefix}:tpm:{scope.key}"
