"""Security event counts: cheap in-process counters, flushed to ``security_event_counts``.

A 401 flood must not become a database write per request, so every event is one locked integer
increment in :data:`COUNTS`, keyed ``(kind, reason)``. :class:`CountFlusher` (started by the
runtime) adds the drained counts to the table every ``interval_s`` seconds (default 60) and on
shutdown, in one transaction per flush: ``INSERT ... ON CONFLICT (day, kind, reason) DO UPDATE
SET count = count + excluded.count`` (SQLite and PostgreSQL), so several processes add up.

A window never crosses a UTC midnight: the flusher also wakes at midnight, so every count lands on
the day it happened (give or take the wake-up latency).

Security counts its own events: the feeding sites are in this package (token checks, sign-in,
refresh rotation, the sanitizer), and the reason of a refusal is the ``reason`` the
:class:`~opsgate.security.errors.Unauthorized` was raised with, never its message text.

Kinds and their reasons — stable codes, never user input:

==================== =========================================================================
``sign_in_failure``  ``bad_credentials`` (password grant or dashboard session refused)
``token_rejection``  an :class:`~opsgate.security.errors.AuthFailure` (``missing``,
                     ``wrong_scheme``, ``malformed``, ``bad_signature``, ``bad_algorithm``,
                     ``wrong_audience``, ``expired``, ``not_yet_valid``, ``unknown_role``,
                     ``unknown_key``, ``idp_unavailable``, ``refresh_invalid``)
``refresh_reuse``    ``family_revoked`` (RFC 9700 §4.14.2 reuse detection)
``rejection``        ``rate_limited`` (429), ``budget_exceeded`` (402)
``redaction``        a sanitizer kind (:mod:`opsgate.security.sanitizer`: ``email``, ``jwt``, …)
==================== =========================================================================
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, date, datetime, time, timedelta
from typing import Self

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from opsgate.clock import Clock
from opsgate.errors import OpsgateError
from opsgate.security.errors import Unauthorized
from opsgate.security.models import security_event_counts
from opsgate.store.db import begin_write

log = logging.getLogger("opsgate.security")

SIGN_IN_FAILURE = "sign_in_failure"
TOKEN_REJECTION = "token_rejection"
REFRESH_REUSE = "refresh_reuse"
REJECTION = "rejection"
REDACTION = "redaction"


class SecurityCounts:
    """Thread-safe ``(kind, reason) -> count``; :meth:`add` is one locked dict increment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, kind: str, reason: str, n: int = 1) -> None:
        """Count ``n`` events of ``kind`` for ``reason`` (both stable codes, see the module)."""
        key = (kind, reason)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def drain(self) -> dict[tuple[str, str], int]:
        """Take every count so far and start again from zero."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts

    def restore(self, counts: dict[tuple[str, str], int]) -> None:
        """Put drained ``counts`` back (a flush that failed), added to what came in since."""
        for (kind, reason), n in counts.items():
            self.add(kind, reason, n)


COUNTS = SecurityCounts()
"""The process-wide counters every feeding site adds to."""


REJECTED_CODES = frozenset({"rate_limited", "budget_exceeded"})
"""Error codes counted as ``rejection`` events."""


def count_refusal(exc: Exception) -> None:
    """Count an operation call's refusal: a 401 as a token rejection by its
    :class:`~opsgate.security.errors.AuthFailure` reason, a rate-limit or budget refusal by its
    error code; anything else is not a security event."""
    if isinstance(exc, Unauthorized):
        COUNTS.add(TOKEN_REJECTION, exc.reason)
    elif isinstance(exc, OpsgateError) and exc.code in REJECTED_CODES:
        COUNTS.add(REJECTION, exc.code)


class CountFlusher:
    """Adds :data:`COUNTS` (or ``counts``) to ``security_event_counts`` every ``interval_s``
    seconds, at each UTC midnight and on :meth:`stop` (``async with flusher:`` starts and stops it). A failed flush keeps its counts for the
    next one (logged as a warning, never raised into the loop)."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        interval_s: float = 60.0,
        counts: SecurityCounts = COUNTS,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._interval = interval_s
        self._counts = counts
        self._day = clock.now().astimezone(UTC).date()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the flush loop as an asyncio task of the running loop."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop and flush what is left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.to_thread(self.flush)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def flush(self) -> int:
        """Add the drained counts to the current window's day; returns the rows written."""
        day, now = self._day, self._clock.now().astimezone(UTC)
        self._day = now.date()
        counts = self._counts.drain()
        if not counts:
            return 0
        try:
            add_counts(self._engine, day, counts)
        except Exception:
            self._counts.restore(counts)
            log.warning("security event counts not flushed; kept for the next flush", exc_info=True)
            return 0
        return len(counts)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._next_wait())
            await asyncio.to_thread(self.flush)

    def _next_wait(self) -> float:
        now = self._clock.now().astimezone(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), time(0), tzinfo=UTC)
        return max(0.0, min(self._interval, (midnight - now).total_seconds()))


def add_counts(engine: Engine, day: date, counts: dict[tuple[str, str], int]) -> None:
    """Upsert ``counts`` onto ``day`` in one transaction (``count = count + excluded.count``)."""
    rows = [{"day": day, "kind": k, "reason": r, "count": n} for (k, r), n in sorted(counts.items())]
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(security_event_counts).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=["day", "kind", "reason"],
        set_={"count": security_event_counts.c.count + stmt.excluded["count"]},
    )
    with begin_write(engine) as conn:
        conn.execute(stmt)


def counts_for(engine: Engine, day: date) -> dict[str, dict[str, int]]:
    """The stored counts of ``day``: ``{kind: {reason: count}}``, reasons sorted."""
    t = security_event_counts.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.kind, t.reason, t.count).where(t.day == day).order_by(t.kind, t.reason)
        ).all()
    result: dict[str, dict[str, int]] = {}
    for kind, reason, n in rows:
        result.setdefault(kind, {})[reason] = n
    return result
