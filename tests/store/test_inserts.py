"""``opsgate.store.inserts.insert_rows`` and ``UTCDateTime``'s SQLite bind processor (issue 21)
store exactly the bytes SQLAlchemy's own path stored, on SQLite and PostgreSQL.

Each comparison writes the same rows twice, into two databases of the same store: once the old
way (``conn.execute(table.insert(), rows)`` with ``UTCDateTime``'s processing as SQLAlchemy
composes it: ``process_bind_param``, then the dialect ``DATETIME``'s processor) and once the new
way, then reads both back raw (SQLite: each value with its storage class; PostgreSQL: each row's
text form) and compares them. A conversion that differs in any digit fails the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Table, insert
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator
from tests.stores import migrated_url

from opsgate.clock import ManualClock
from opsgate.errors import InvalidInput
from opsgate.ledger import writer
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger
from opsgate.metering.models import ai_operation_attempts, budget_reservations, budgets
from opsgate.store.db import make_engine
from opsgate.store.inserts import insert_rows
from opsgate.store.models import ai_operation_log, ledger_entries
from opsgate.store.types import UTCDateTime, sqlite_utc_text

IST = timezone(timedelta(hours=5, minutes=30))
PST = timezone(timedelta(hours=-8))
TIMES = [
    datetime(2026, 12, 5, 15, 20, 1, 123456, tzinfo=UTC),
    datetime(2026, 12, 5, 15, 20, 1, tzinfo=UTC),  # microsecond 0: still six digits
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=PST),  # next year in UTC
    datetime(2027, 1, 1, 3, 0, 0, 5, tzinfo=IST),  # previous day in UTC
    datetime(999, 3, 4, 5, 6, 7, 80, tzinfo=UTC),  # a three-digit year, zero-padded
    datetime(1, 1, 1, 0, 0, 0, 0, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]
ORDER = {"ledger_entries": "seq", "ai_operation_log": "id", "ai_operation_attempts": "request_id, seq",
         "budget_reservations": "request_id, budget_id", "budgets": "id"}


def old_bind_processor(self: UTCDateTime, dialect: Any) -> Any:
    """SQLAlchemy's own composition for a TypeDecorator: process_bind_param, then the impl's."""
    return TypeDecorator.bind_processor(self, dialect)


def old_insert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """The writer's insert before issue 21's change (which skipped an empty list)."""
    if rows:
        conn.execute(table.insert(), [dict(row) for row in rows])


def test_sqlite_text_is_sqlalchemys_text_for_every_time() -> None:
    dialect = sqlite_dialect.dialect()
    old = old_bind_processor(UTCDateTime().dialect_impl(dialect), dialect)
    new = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert new is sqlite_utc_text
    step = timedelta(days=1, seconds=3607, microseconds=999_983)
    times = TIMES + [datetime(1970, 1, 1, tzinfo=tz) + n * step
                     for n in range(2000) for tz in (UTC, IST, PST)]
    assert [new(t) for t in times] == [old(t) for t in times]
    assert new(TIMES[1]) == "2026-12-05 15:20:01.000000"
    assert new(TIMES[2]) == "2027-01-01 07:59:59.999999"
    assert new(TIMES[4]) == "0999-03-04 05:06:07.000080"
    assert new(None) is old(None) is None
    with pytest.raises(TypeError, match="naive 2026-12-05T15:20:01"):
        new(datetime(2026, 12, 5, 15, 20, 1))


@contextmanager
def two_stores(store: str, tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """Two migrated databases of ``store``: (the old path's, the new path's)."""
    with migrated_url(store, tmp_path / "old", "old") as old_url, \
            migrated_url(store, tmp_path / "new", "new") as new_url:
        old, new = make_engine(old_url), make_engine(new_url)
        try:
            yield old, new
        finally:
            old.dispose()
            new.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    return str(request.param)


def stored(engine: Engine, table: str) -> list[Any]:
    """``table``'s rows as stored: SQLite (read with plain sqlite3, no converters) every value
    with its storage class; PostgreSQL each row's text form."""
    if engine.dialect.name == "sqlite":
        with sqlite3.connect(str(engine.url.database)) as raw:
            columns = [row[1] for row in raw.execute(f"PRAGMA table_info({table})")]
            select = ", ".join(f"typeof({c}), {c}" for c in columns)
            return raw.execute(f"SELECT {select} FROM {table} ORDER BY {ORDER[table]}").fetchall()
    with engine.connect() as conn:
        return list(conn.exec_driver_sql(f"SELECT t::text FROM {table} t ORDER BY {ORDER[table]}").scalars())


def log_rows() -> list[dict[str, Any]]:
    """``CallRecord.log_row``-shaped rows: every column, NULLs, both booleans, odd floats."""
    return [{
        "request_id": f"req-{i}", "user_id": "alice", "operation": "email-compose",
        "provider": None if i == 2 else "openai", "model": "gpt-x", "served_model": "gpt-x-2026",
        "variant": None if i % 2 else "b", "repaired": [None, True, False][i % 3], "shadow": i == 3,
        "degraded": [False, None, True][i % 3], "status": "ok" if i % 2 else "error",
        "error_code": None if i % 2 else "provider_timeout", "attempts": i, "latency_ms": 0.1 + 0.2 * i,
        "provider_latency_ms": None if i == 1 else 1e-7 * i, "input_tokens": 1000 * i,
        "output_tokens": 7, "cache_write_tokens": 0, "cache_read_tokens": 3, "reasoning_tokens": 2**31 - 1,
        "cost_micro_usd": 2**53 + i, "created_at": t,
    } for i, t in enumerate(TIMES)]


def attempt_rows() -> list[dict[str, Any]]:
    return [{"request_id": f"req-{i}", "seq": n, "provider": "anthropic", "model": "claude-x",
             "served_model": None if n else "claude-x-1", "outcome": "ok", "billing": "billed",
             "input_tokens": 10 * i, "output_tokens": n, "cache_write_tokens": 0, "cache_read_tokens": 1,
             "cost_micro_usd": 17 * i + n, "created_at": t} for i, t in enumerate(TIMES) for n in range(2)]


def entry_rows() -> list[dict[str, Any]]:
    hashes = [hashlib.sha256(bytes([n])).digest() for n in range(len(TIMES) + 1)]
    return [{"seq": n, "prev_hash": hashes[n], "entry_hash": hashes[n + 1], "body": b'{"x":"\x00\xff"}' * n}
            for n in range(len(TIMES))]


def reservation_rows() -> list[dict[str, Any]]:
    return [{"request_id": f"req-{i}", "budget_id": 1, "period_start": t.replace(hour=0),
             "worst_micro_usd": 99 * i, "state": "open", "created_at": t,
             "expires_at": t + timedelta(seconds=0.25) if t.year < 9999 else t}
            for i, t in enumerate(TIMES)]


TABLES: list[tuple[Table, Callable[[], list[dict[str, Any]]]]] = [
    (ledger_entries, entry_rows), (ai_operation_log, log_rows), (ai_operation_attempts, attempt_rows),
    (budget_reservations, reservation_rows),
]


def write(engine: Engine, inserting: Callable[[Connection, Table, Sequence[Mapping[str, Any]]], None],
          rows_of: Callable[[Table, list[dict[str, Any]]], list[dict[str, Any]]] = lambda _t, rows: rows) -> None:
    with engine.begin() as conn:
        conn.execute(insert(budgets).values(id=1, user_id="alice", operation="*", period="day",
                                            limit_micro_usd=10**9, updated_at=TIMES[0]))
        for table, rows in TABLES:
            inserting(conn, table, rows_of(table, rows()))


def write_both_ways(old: Engine, new: Engine, monkeypatch: pytest.MonkeyPatch,
                    rows_of: Callable[[Table, list[dict[str, Any]]], list[dict[str, Any]]] = lambda _t, rows: rows,
                    ) -> None:
    """:func:`write` the rows into ``old`` the old way (SQLAlchemy's insert and datetime binding)
    and into ``new`` with :func:`insert_rows`; assert every table stores the same rows."""
    with monkeypatch.context() as patch:
        patch.setattr(UTCDateTime, "bind_processor", old_bind_processor)
        write(old, old_insert, rows_of)
    write(new, insert_rows, rows_of)
    for table in [*ORDER]:
        assert stored(new, table) == stored(old, table), table


def test_insert_rows_stores_what_sqlalchemys_insert_stored(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with two_stores(store, tmp_path) as (old, new):
        write_both_ways(old, new, monkeypatch)
        assert len(stored(new, "ai_operation_log")) == len(TIMES)


def test_rows_without_a_defaulted_column_go_sqlalchemys_way_and_store_the_same(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``shadow`` (a Python-side default) or with keys in another order per row, the rows
    take ``conn.execute(table.insert(), rows)``: the same stored rows as the old path."""
    def uneven(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if table is ai_operation_log:
            return [{k: v for k, v in row.items() if k != "shadow"} for row in rows]
        return [dict(reversed(row.items())) if n % 2 else row for n, row in enumerate(rows)]

    with two_stores(store, tmp_path) as (old, new):
        write_both_ways(old, new, monkeypatch, uneven)
        assert len(stored(new, "ai_operation_attempts")) == 2 * len(TIMES)


def test_insert_rows_keeps_the_nul_refusal_and_the_integrity_error(store: str, tmp_path: Path) -> None:
    with two_stores(store, tmp_path) as (_old, new):
        row = log_rows()[0]
        with pytest.raises(InvalidInput), new.begin() as conn:
            insert_rows(conn, ai_operation_log, [row, {**row, "request_id": "req-\x00"}])
        with pytest.raises(IntegrityError), new.begin() as conn:
            insert_rows(conn, ai_operation_log, [row, row])
        assert stored(new, "ai_operation_log") == []


def run_ledger(engine: Engine) -> None:
    """Appends with log and attempt rows through the writer, in batches (one event loop)."""
    async def main() -> None:
        with Ledger(engine, ManualClock(TIMES[0])) as ledger:
            logs, attempts = log_rows(), attempt_rows()
            await asyncio.gather(*(
                ledger.append("result", {"request_id": row["request_id"], "status": row["status"]},
                              [(ai_operation_log, row)] + [(ai_operation_attempts, a) for a in attempts
                                                           if a["request_id"] == row["request_id"]])
                for row in logs))
            await ledger.append("intent", {"request_id": "last"})
    asyncio.run(main())


def test_the_writer_stores_what_it_stored_before_and_verifies(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with two_stores(store, tmp_path) as (old, new):
        with monkeypatch.context() as patch:
            patch.setattr(UTCDateTime, "bind_processor", old_bind_processor)
            patch.setattr(writer, "insert_rows", old_insert)
            run_ledger(old)
        run_ledger(new)
        for table in ("ledger_entries", "ai_operation_log", "ai_operation_attempts"):
            assert stored(new, table) == stored(old, table), table
        assert len(stored(new, "ledger_entries")) == len(TIMES) + 1
        assert verify(old).ok and verify(new).ok
