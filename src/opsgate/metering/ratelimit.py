"""Gateway-side rate limits with the ``limits`` library (sliding window counter, one minute).

The sliding window counter keeps two counters per key (this and the previous minute, weighted by
the overlap), so counting thousands of tokens costs one increment; a moving window would store
one timestamp per token.

Four limits, each off when 0 (settings ``rate_limit_user_rpm``, ``rate_limit_user_tpm``,
``rate_limit_user_operation_rpm``, ``rate_limit_user_operation_tpm``):

- requests per minute per user, and per (user, operation): a request takes one unit at step 3;
- tokens per minute per user, and per (user, operation): a call takes its worst-case tokens at
  admission (after validation, when its prompt is known) and is settled to its billed tokens
  (``Usage.total_tokens``) when it ends, with :mod:`opsgate.metering.tokenlimits` -- so
  concurrent calls cannot take more than a limit between them. A call whose worst case alone is
  larger than a limit is refused.

Counters live in memory (one process) or, with ``OPSGATE_REDIS_URL``, in Redis, shared by every
replica (``key_prefix`` separates deployments); ``opsgate serve --workers N`` refuses to start
with limits but without Redis unless told ``--per-worker-limits``. Over a limit: :class:`RateLimitExceeded` (429,
``Retry-After`` = seconds until the window has room again, as ``limits`` reports it). A gateway-side limit is
never reported to the router or a circuit breaker. If Redis is unreachable the limiter fails open
(logs an error and admits): the budget, not the rate limit, is what guards money.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from opsgate.metering.errors import RateLimitExceeded
from opsgate.metering.tokenlimits import (
    MemoryTokenWindows,
    RedisTokenWindows,
    Refusal,
    TokenHold,
    TokenScope,
    TokenWindows,
)

log = logging.getLogger("opsgate.metering")


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-minute limits; 0 turns one off. ``rpm`` counts requests, ``tpm`` billed tokens."""

    user_rpm: int = 0
    user_tpm: int = 0
    user_operation_rpm: int = 0
    user_operation_tpm: int = 0

    @property
    def enabled(self) -> bool:
        """True when any limit is set."""
        return any((self.user_rpm, self.user_tpm, self.user_operation_rpm, self.user_operation_tpm))


def make_storage(redis_url: str | None, key_prefix: str) -> Storage:
    """``limits`` async storage: Redis (redis-py) for ``redis://`` / ``rediss://`` URLs, else memory."""
    if not redis_url:
        return MemoryStorage()
    return RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix=key_prefix,
                        wrap_exceptions=True)


def make_token_windows(redis_url: str | None, key_prefix: str) -> TokenWindows:
    """Token windows in Redis for ``redis://`` / ``rediss://`` URLs, else in memory."""
    return RedisTokenWindows(redis_url, key_prefix) if redis_url else MemoryTokenWindows()


class RateLimiter:
    """Checks and counts the limits of :class:`RateLimits`: requests on ``storage`` (``limits``),
    tokens on ``windows``."""

    def __init__(self, limits: RateLimits, storage: Storage, windows: TokenWindows | None = None) -> None:
        self.limits = limits
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        self._windows = windows or MemoryTokenWindows()
        self._per_user, self._per_pair = _items(limits.user_rpm, limits.user_operation_rpm, "rpm")

    async def admit(self, user_id: str, operation: str) -> None:
        """Step 3: raise :class:`RateLimitExceeded` if a request limit is reached; otherwise count
        this request in every request limit (a refused request is counted in none)."""
        if not self.limits.enabled:
            return
        try:
            requests = self._request_items(user_id, operation)
            # Check every limit before counting in any of them. A hit checks and counts in one
            # storage operation, so the first limit's hit is its check: a request it refuses is
            # counted nowhere yet (3 storage operations per call instead of 4, issue 21).
            for item, ids in requests[1:]:
                if not await self._strategy.test(item, *ids):
                    raise await self._refusal(item, ids)
            for item, ids in requests:
                if not await self._strategy.hit(item, *ids):  # lost a race for the last unit
                    raise await self._refusal(item, ids)
        except StorageError:
            log.error("rate-limit storage unreachable; admitting without a rate limit")

    async def take_tokens(self, user_id: str, operation: str, worst_case: int) -> TokenHold | None:
        """At admission: take ``worst_case`` tokens from every token limit of the user and the
        (user, operation), all or none. Raises :class:`RateLimitExceeded` naming the full limit
        (``Retry-After`` until it has room; a worst case above the limit itself can never fit).
        ``None`` when no token limit applies or the storage is unreachable (fails open)."""
        scopes = self._token_scopes(user_id, operation)
        if not scopes:
            return None
        for scope in scopes:
            if worst_case > scope.limit:
                raise RateLimitExceeded(
                    f"This call may use up to {worst_case} tokens, more than the limit of "
                    f"{scope.limit} tokens per minute {scope.label}; shorten the input", 60)
        try:
            taken = await self._windows.take(scopes, worst_case)
        except RedisError:
            log.error("rate-limit storage unreachable; admitting without a token limit")
            return None
        if isinstance(taken, Refusal):
            wait = taken.retry_after_s
            raise RateLimitExceeded(f"The limit of {taken.scope.limit} tokens per minute "
                                    f"{taken.scope.label} is reached; retry in {wait} s", wait)
        return taken

    async def settle_tokens(self, hold: TokenHold | None, actual: int | None) -> None:
        """When the call ends: settle ``hold`` to the ``actual`` billed tokens (0 for a call
        refused before any provider saw it; ``None`` when usage is unknown keeps the worst case).
        Never raises."""
        if hold is None or actual is None:
            return
        try:
            await self._windows.settle(hold, actual)
        except RedisError:
            log.error("rate-limit storage unreachable; this call's tokens stay at its worst case")

    async def _refusal(self, item: RateLimitItem, ids: tuple[str, ...]) -> RateLimitExceeded:
        stats = await self._strategy.get_window_stats(item, *ids)
        return _exceeded("requests", item, stats.reset_time)

    def _request_items(self, user_id: str, operation: str) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        items: list[tuple[RateLimitItem, tuple[str, ...]]] = []
        if self._per_user is not None:
            items.append((self._per_user, (user_id,)))
        if self._per_pair is not None:
            items.append((self._per_pair, (user_id, operation)))
        return items

    def _token_scopes(self, user_id: str, operation: str) -> list[TokenScope]:
        scopes = []
        if self.limits.user_tpm:
            scopes.append(TokenScope(f"user:{user_id}", self.limits.user_tpm, "per user"))
        if self.limits.user_operation_tpm:
            scopes.append(TokenScope(f"user-op:{user_id}:{operation}", self.limits.user_operation_tpm,
                                     "per user and operation"))
        return scopes


def _items(per_user: int, per_pair: int, kind: str) -> tuple[RateLimitItem | None, RateLimitItem | None]:
    """The per-user and per-(user, operation) items of one kind of limit (``None`` when off),
    built once per limiter: the ``limits`` library takes the ids per call."""
    user = RateLimitItemPerMinute(per_user, namespace=f"opsgate-{kind}-user") if per_user else None
    pair = RateLimitItemPerMinute(per_pair, namespace=f"opsgate-{kind}-user-op") if per_pair else None
    return user, pair


def _exceeded(what: str, item: RateLimitItem, reset_time: float) -> RateLimitExceeded:
    wait = max(1, math.ceil(reset_time - time.time()))
    scope = "per user and operation" if item.namespace.endswith("user-op") else "per user"
    return RateLimitExceeded(
        f"The limit of {item.amount} {what} per minute {scope} is reached; retry in {wait} s", wait
    )
