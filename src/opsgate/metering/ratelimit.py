"""Gateway-side rate limits: requests and tokens per minute, per user and per (user, operation).

Four limits, each off when 0 (settings ``rate_limit_user_rpm``, ``rate_limit_user_tpm``,
``rate_limit_user_operation_rpm``, ``rate_limit_user_operation_tpm``):

- requests per minute per user, and per (user, operation): at step 3 a request is logged in both
  limits or in neither, and admitted only if each has fewer than its limit logged in the last
  60 s -- exact: at most N requests in any 60-second window, with
  :mod:`opsgate.metering.requestlimits` (a moving window, one Lua script on Redis);
- tokens per minute per user, and per (user, operation): a call takes its worst-case tokens at
  admission (after validation, when its prompt is known) and is settled to its billed tokens
  (``Usage.total_tokens``) when it ends, with :mod:`opsgate.metering.tokenlimits` -- so
  concurrent calls cannot take more than a limit between them; exact: at most N tokens held or
  billed in any 60-second window (a moving window of holds). A call whose worst case alone is
  larger than a limit is refused.

Logs and counters live in memory (one process) or, with ``OPSGATE_REDIS_URL``, in Redis, shared
by every replica (``key_prefix`` separates deployments); ``opsgate serve --workers N`` refuses to
start with limits but without Redis unless told ``--per-worker-limits``. Over a limit:
:class:`RateLimitExceeded` (429, ``Retry-After`` = whole seconds until the window has room).
Every request the request limits counted or refused carries the RateLimit header fields of
draft-ietf-httpapi-ratelimit-headers-11 (sections 3 and 4): ``RateLimit-Policy`` lists every
request policy, e.g. ``"per-user";q=5;w=60, "per-user-operation";q=3;w=60``, and ``RateLimit``
names the one with the fewest requests left after this one (on a tie, the one whose place frees
last): ``r`` = that number, ``t`` = whole seconds until its oldest counted request leaves the
window (one more place frees), e.g. ``"per-user-operation";r=2;t=60``; on a refusal, the refusing
policy with ``r=0`` and ``t`` = ``Retry-After``. The store answers ``r`` and ``t`` in the admitting
step itself; the header strings are built once per request. A gateway-side limit is never
reported to the router or a circuit breaker. If Redis is unreachable the limiter fails open (logs
an error and admits, without RateLimit fields): the budget, not the rate limit, guards money.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from redis.exceptions import RedisError

from opsgate.metering.errors import RateLimitExceeded
from opsgate.metering.requestlimits import (
    WINDOW_S,
    MemoryRequestLog,
    RedisRequestLog,
    RequestLog,
    RequestRefusal,
    RequestScope,
)
from opsgate.metering.tokenlimits import (
    MemoryTokenWindows,
    RedisTokenWindows,
    Refusal,
    TokenHold,
    TokenScope,
    TokenWindows,
)

log = logging.getLogger("opsgate.metering")

_USER, _USER_OP = "per-user", "per-user-operation"  # request policy names in the RateLimit fields
_NO_FIELDS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-minute limits; 0 turns one off. ``rpm`` counts requests, ``tpm`` billed tokens."""

    user_rpm: int = 0
    user_tpm: int = 0
    user_operation_rpm: int = 0
    user_operation_tpm: int = 0


def make_request_log(redis_url: str | None, key_prefix: str) -> RequestLog:
    """Request logs in Redis for ``redis://`` / ``rediss://`` URLs, else in memory."""
    return RedisRequestLog(redis_url, key_prefix) if redis_url else MemoryRequestLog()


def make_token_windows(redis_url: str | None, key_prefix: str) -> TokenWindows:
    """Token windows in Redis for ``redis://`` / ``rediss://`` URLs, else in memory."""
    return RedisTokenWindows(redis_url, key_prefix) if redis_url else MemoryTokenWindows()


class RateLimiter:
    """Checks and counts the limits of :class:`RateLimits`: requests in ``requests`` (a
    :class:`RequestLog`), tokens in ``windows``; both default to this process's memory."""

    def __init__(self, limits: RateLimits, requests: RequestLog | None = None,
                 windows: TokenWindows | None = None) -> None:
        self.limits = limits
        self._requests = requests or MemoryRequestLog()
        self._windows = windows or MemoryTokenWindows()
        policies = []
        if limits.user_rpm:
            policies.append(f'"{_USER}";q={limits.user_rpm};w={WINDOW_S}')
        if limits.user_operation_rpm:
            policies.append(f'"{_USER_OP}";q={limits.user_operation_rpm};w={WINDOW_S}')
        self._policy_field = ", ".join(policies)  # the RateLimit-Policy field value

    async def admit(self, user_id: str, operation: str) -> Mapping[str, str]:
        """Step 3: raise :class:`RateLimitExceeded` if a request limit is reached; otherwise log
        this request in every request limit (a refused request is logged in none) and return the
        response's RateLimit header fields (field name -> value; see the module docstring). One
        atomic step (one Redis round trip), so concurrent requests cannot both take the last
        place. No fields when no request limit applies or the storage is unreachable."""
        scopes = self._request_scopes(user_id, operation)
        if not scopes:
            return _NO_FIELDS
        try:
            quota = await self._requests.admit(scopes)
        except RedisError:
            log.error("rate-limit storage unreachable; admitting without a request limit")
            return _NO_FIELDS
        if isinstance(quota, RequestRefusal):
            wait, scope = quota.retry_after_s, quota.scope
            raise RateLimitExceeded(
                f"The limit of {scope.limit} requests per minute {scope.label} is reached; "
                f"retry in {wait} s", wait, headers=self._fields(scope, 0, wait))
        return self._fields(quota.scope, quota.remaining, quota.reset_s)

    def _fields(self, scope: RequestScope, remaining: int, reset_s: int) -> dict[str, str]:
        """``RateLimit-Policy`` (every request policy) and ``RateLimit`` for ``scope``'s policy:
        ``remaining`` requests, one more place in ``reset_s`` whole seconds."""
        return {"RateLimit-Policy": self._policy_field,
                "RateLimit": f'"{scope.policy}";r={remaining};t={reset_s}'}

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

    def _request_scopes(self, user_id: str, operation: str) -> list[RequestScope]:
        scopes = []
        if self.limits.user_rpm:
            scopes.append(RequestScope(f"user:{user_id}", self.limits.user_rpm, _USER, "per user"))
        if self.limits.user_operation_rpm:
            scopes.append(RequestScope(f"user-op:{user_id}:{operation}", self.limits.user_operation_rpm,
                                       _USER_OP, "per user and operation"))
        return scopes

    def _token_scopes(self, user_id: str, operation: str) -> list[TokenScope]:
        scopes = []
        if self.limits.user_tpm:
            scopes.append(TokenScope(f"user:{user_id}", self.limits.user_tpm, "per user"))
        if self.limits.user_operation_tpm:
            scopes.append(TokenScope(f"user-op:{user_id}:{operation}", self.limits.user_operation_tpm,
                                     "per user and operation"))
        return scopes
