"""Ledger entries of one time window, found by binary search on ``ts``.

The writer clamps every entry's ``ts`` so it never goes backwards (:mod:`opsgate.ledger.entry`),
so entries are sorted by ``ts`` as well as by ``seq`` and the first entry at or after a moment is
found with ``O(log n)`` point reads; only the window's rows are then decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select

from opsgate.ledger.entry import format_ts
from opsgate.ledger.service import log_size
from opsgate.store.models import ledger_entries

BATCH = 5000


def entries_between(engine: Engine, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
    """Decoded bodies (``{"v", "seq", "ts", "kind", ...payload}``) of the entries with
    ``start <= ts < end`` (timezone-aware datetimes), in ``seq`` order."""
    size = log_size(engine)
    with engine.connect() as conn:
        lo, hi = _first_at(conn, format_ts(start), size), _first_at(conn, format_ts(end), size)
        for first in range(lo, hi, BATCH):
            rows = conn.execute(
                select(ledger_entries.c.body)
                .where(ledger_entries.c.seq >= first, ledger_entries.c.seq < min(first + BATCH, hi))
                .order_by(ledger_entries.c.seq)
            ).scalars()
            for body in rows:
                yield orjson.loads(body)


def _first_at(conn: Connection, ts: str, size: int) -> int:
    """The smallest seq whose ``ts`` is ``>= ts`` (``size`` when none is)."""
    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi) // 2
        body = conn.execute(
            select(ledger_entries.c.body).where(ledger_entries.c.seq == mid)
        ).scalar_one()
        if orjson.loads(body)["ts"] < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo
