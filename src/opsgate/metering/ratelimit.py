"""Gateway-side rate limits with the ``limits`` library (sliding window counter, one minute).

The sliding window counter keeps two counters per key (this and the previous minute, weighted by
the overlap), so counting thousands of tokens costs one increment; a moving window would store
one timestamp per token.

Four limits, each off when 0 (settings ``rate_limit_user_rpm``, ``rate_limit_user_tpm``,
``rate_limit_user_operation_rpm``, ``rate_limit_user_operation_tpm``):

- requests per minute per user, and per (user, operation): a request takes one unit at step 3;
- tokens per minute per user, and per (user, operation): a request is admitted while the window
  still has tokens left, and its billed tokens (``Usage.total_tokens``) are taken after the call
  (the prompt size is unknown at step 3, and the answer's size until the end). A call larger than
  what is left fills the window, so the next one waits.

Counters live in memory (one process) or, with ``OPSGATE_REDIS_URL``, in Redis, shared by every
replica (``key_prefix`` separates deployments). Over a limit: :class:`RateLimitExceeded` (429,
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

from opsgate.metering.errors import RateLimitExceeded

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


class RateLimiter:
    """Checks and counts the limits of :class:`RateLimits` on ``storage``."""

    def __init__(self, limits: RateLimits, storage: Storage) -> None:
        self.limits = limits
        self._strategy = SlidingWindowCounterRateLimiter(storage)

    async def admit(self, user_id: str, operation: str) -> None:
        """Step 3: raise :class:`RateLimitExceeded` if a token window is used up or a request
        limit is reached; otherwise count this request in every request limit (a refused request
        is counted in none)."""
        if not self.limits.enabled:
            return
        try:
            for item, ids in self._token_items(user_id, operation):
                stats = await self._strategy.get_window_stats(item, *ids)
                if stats.remaining <= 0:
                    raise _exceeded("tokens", item, stats.reset_time)
            requests = self._request_items(user_id, operation)
            for item, ids in requests:  # check every limit before counting in any of them
                if not await self._strategy.test(item, *ids):
                    raise await self._refusal(item, ids)
            for item, ids in requests:
                if not await self._strategy.hit(item, *ids):  # lost a race for the last unit
                    raise await self._refusal(item, ids)
        except StorageError:
            log.error("rate-limit storage unreachable; admitting without a rate limit")

    async def charge_tokens(self, user_id: str, operation: str, tokens: int) -> None:
        """After a call: take ``tokens`` billed tokens from each token window (at most what is
        left, so an oversized call fills the window)."""
        if tokens <= 0:
            return
        try:
            for item, ids in self._token_items(user_id, operation):
                if not await self._strategy.hit(item, *ids, cost=min(tokens, item.amount)):
                    left = (await self._strategy.get_window_stats(item, *ids)).remaining
                    if left > 0:
                        await self._strategy.hit(item, *ids, cost=left)
        except StorageError:
            log.error("rate-limit storage unreachable; tokens of this call not counted")

    async def _refusal(self, item: RateLimitItem, ids: tuple[str, ...]) -> RateLimitExceeded:
        stats = await self._strategy.get_window_stats(item, *ids)
        return _exceeded("requests", item, stats.reset_time)

    def _request_items(self, user_id: str, operation: str) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        return _items(self.limits.user_rpm, self.limits.user_operation_rpm, "rpm", user_id, operation)

    def _token_items(self, user_id: str, operation: str) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        return _items(self.limits.user_tpm, self.limits.user_operation_tpm, "tpm", user_id, operation)


def _items(per_user: int, per_pair: int, kind: str, user_id: str, operation: str
           ) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
    items = []
    if per_user:
        items.append((RateLimitItemPerMinute(per_user, namespace=f"opsgate-{kind}-user"), (user_id,)))
    if per_pair:
        items.append((RateLimitItemPerMinute(per_pair, namespace=f"opsgate-{kind}-user-op"),
                      (user_id, operation)))
    return items


def _exceeded(what: str, item: RateLimitItem, reset_time: float) -> RateLimitExceeded:
    wait = max(1, math.ceil(reset_time - time.time()))
    scope = "per user and operation" if item.namespace.endswith("user-op") else "per user"
    return RateLimitExceeded(
        f"The limit of {item.amount} {what} per minute {scope} is reached; retry in {wait} s", wait
    )
