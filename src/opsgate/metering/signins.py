"""Throttling of failed password sign-ins (tester-priv F11: 72 wrong passwords in a row, no 429).

Every password sign-in (the token endpoint's password grant, ``POST /v1/auth/session`` and the
dashboard's login form) is checked before its password is: when the account it names, or the
client address it comes from, has ``limit`` failed sign-ins logged within the last ``window_s``
seconds, it is refused with :class:`RateLimitExceeded` (429 ``rate_limited`` with
``Retry-After``, RFC 6585 §4: whole seconds until the oldest of those failures leaves the window)
and its password is not checked at all. A failed sign-in is logged for both; a successful one
logs nothing. An unknown account is throttled exactly like a known one, so a 429 tells nothing
about which accounts exist. Defaults (settings ``sign_in_failures_per_account``,
``sign_in_failures_per_address``, ``sign_in_failure_window_s``; 0 turns a limit off): 10 failures
per account and 100 per address in 15 minutes, at most 40 guesses an hour at one account (OWASP
ASVS 4.0 §2.2.1 allows no more than 100). The price is that anyone can hold an account's password
sign-in off for up to the window by failing on purpose; its refresh tokens and sessions keep
working.

The logs are :mod:`opsgate.metering.requestlimits` moving windows (exact: at most ``limit``
failures in any window; concurrent sign-ins may each pass the check before the failures of the
others are logged, so a burst can exceed it by its concurrency), in this process's memory or,
with ``OPSGATE_REDIS_URL``, in Redis shared by every replica under
``<rate_limit_key_prefix>:signin:rpm:account:<32 hex of SHA-256(lower-cased name)>`` (no name in
clear) and ``...:address:<IP address>``. If Redis is unreachable the throttle fails open (logged):
the Argon2id hash still makes each guess cost.
"""

from __future__ import annotations

import hashlib
import logging

from redis.exceptions import RedisError

from opsgate.config import Settings
from opsgate.metering.errors import RateLimitExceeded
from opsgate.metering.requestlimits import MemoryRequestLog, RedisRequestLog, RequestLog, RequestRefusal, RequestScope

log = logging.getLogger("opsgate.metering")


class SignInThrottle:
    """Failed sign-ins per account (at most ``per_account``) and per client address (at most
    ``per_address``) in ``failures``, a :class:`RequestLog` over the throttle's window."""

    def __init__(self, failures: RequestLog, per_account: int, per_address: int) -> None:
        self._failures = failures
        self._per_account = per_account
        self._per_address = per_address

    async def check(self, username: str, address: str | None) -> None:
        """Before a password is checked: raise :class:`RateLimitExceeded` (``retry_after`` in whole
        seconds) when the account named ``username`` or the client ``address`` (None: unknown,
        not limited) already has its limit of failures in the window. Logs nothing."""
        scopes = self._scopes(username, address)
        if not scopes:
            return
        try:
            answer = await self._failures.admit(scopes, log=False)
        except RedisError:
            log.error("sign-in throttle storage unreachable; checking the password unthrottled")
            return
        if isinstance(answer, RequestRefusal):
            raise RateLimitExceeded(f"Too many failed sign-ins {answer.scope.label}; retry in {answer.retry_after_s} s",
                                    answer.retry_after_s)

    async def failed(self, username: str, address: str | None) -> None:
        """After a refused password: log one failure for the account and the address. Never raises."""
        scopes = self._scopes(username, address)
        if not scopes:
            return
        try:
            await self._failures.admit(scopes)  # a full log (a concurrent failure filled it) stays full
        except RedisError:
            log.error("sign-in throttle storage unreachable; a failed sign-in was not counted")

    def _scopes(self, username: str, address: str | None) -> list[RequestScope]:
        scopes = []
        if self._per_account:
            account = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
            scopes.append(RequestScope(f"account:{account}", self._per_account, "sign-in-account", "for this account"))
        if self._per_address and address:
            scopes.append(RequestScope(f"address:{address}", self._per_address, "sign-in-address",
                                       "from this address"))
        return scopes


def build_sign_in_throttle(settings: Settings) -> SignInThrottle:
    """The throttle of ``settings``: its limits and window, in Redis with ``redis_url`` (key prefix
    ``<rate_limit_key_prefix>:signin``), else in this process's memory."""
    window = settings.sign_in_failure_window_s
    failures: RequestLog = (
        RedisRequestLog(settings.redis_url, f"{settings.rate_limit_key_prefix}:signin", window_s=window)
        if settings.redis_url else MemoryRequestLog(window_s=window))
    return SignInThrottle(failures, settings.sign_in_failures_per_account, settings.sign_in_failures_per_address)
