"""Revoked logins, so an access token dies with its login (tester-priv F5).

A local access token carries ``sid``, the refresh-token family of the login that issued it
(:mod:`opsgate.security.refresh`). Revoking the family (logout, refresh-token reuse, a role
change, a password change) sets ``revoked_at`` on its rows in ``refresh_tokens``; from then on
:class:`~opsgate.security.auth.TokenService` refuses every access token with that ``sid``
(401, reason ``revoked``).

The check is on every authenticated request, so it reads no database: :class:`RevokedLogins` is
a per-process set of revoked family ids. A revocation made in this process is added at once
(:meth:`RevokedLogins.add`, called by :class:`~opsgate.security.refresh.RefreshTokens` after its
transaction commits); every other process's revocations are read from the database every
``REFRESH_S`` seconds by :meth:`RevokedLogins.run`. So another process refuses a revoked login's
access token at most ``REFRESH_S`` seconds (plus one query) after the revocation committed.

Only families revoked within ``horizon_s`` (the access-token lifetime, plus the
``token_clock_leeway_s`` an expired token is still accepted for, plus a minute of clock skew
between processes) are read and kept: an access token of a family revoked earlier has expired.
If the database cannot be read the set keeps what it had and the read is retried at the next
interval (logged); revocations made meanwhile by other processes are seen when it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from opsgate.clock import Clock
from opsgate.security.models import refresh_tokens
from opsgate.security.rls import service_scope

REFRESH_S = 1.0
"""How often every process re-reads the revoked logins: the staleness bound across processes."""
SKEW_S = 60.0
"""Clock skew allowed between the process that revoked and the one that reads (``revoked_at`` is
the revoking process's time)."""

log = logging.getLogger("opsgate.security")


class RevokedLogins:
    """The ids of the logins (refresh-token families) revoked within ``horizon_s`` seconds (see
    the module docstring); ``sid in revoked`` is the check of a request."""

    def __init__(self, engine: Engine, clock: Clock, access_token_ttl_s: float) -> None:
        self._engine = engine
        self._clock = clock
        self._horizon = timedelta(seconds=access_token_ttl_s + SKEW_S)
        self._revoked: dict[str, datetime] = {}  # family id -> when it was revoked
        self._lock = threading.Lock()  # writers only: add (event loop or a thread) and refresh (a thread)

    def __contains__(self, sid: object) -> bool:
        return sid in self._revoked

    def add(self, family_ids: Iterable[str]) -> None:
        """Mark ``family_ids`` revoked in this process now (their rows are already revoked)."""
        now = self._clock.now()
        with self._lock:
            for family_id in family_ids:
                self._revoked.setdefault(family_id, now)

    def refresh(self) -> None:
        """Read the families revoked within the horizon from ``refresh_tokens`` (one indexed range
        query on ``revoked_at``), add them, and forget those revoked before it. Raises the
        database's :class:`~sqlalchemy.exc.SQLAlchemyError`."""
        since = self._clock.now() - self._horizon
        with service_scope(self._engine) as conn:
            rows = conn.execute(
                select(refresh_tokens.c.family_id, func.max(refresh_tokens.c.revoked_at))
                .where(refresh_tokens.c.revoked_at >= since)
                .group_by(refresh_tokens.c.family_id)
            ).all()
        with self._lock:
            self._revoked.update(rows)
            for family_id in [f for f, at in self._revoked.items() if at < since]:
                del self._revoked[family_id]

    async def run(self, interval_s: float = REFRESH_S) -> None:
        """Refresh every ``interval_s`` seconds until cancelled (the runtime's task); a failed
        read is logged and retried at the next interval."""
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except SQLAlchemyError as exc:
                log.error("revoked logins could not be read: %s", type(exc).__name__)
            await asyncio.sleep(interval_s)
