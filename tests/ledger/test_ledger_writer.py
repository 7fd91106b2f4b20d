"""Ledger (group commit): batching, atomic extra rows, all-or-nothing failure, close semantics."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, func, make_url, select
from tests.ledger.ledger_helpers import execute, ledger_rows

from opsgate.clock import ManualClock
from opsgate.errors import InvalidInput, OpsgateError
from opsgate.ledger.entry import decode_body
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger, holds_write_lock
from opsgate.store.db import make_engine
from opsgate.store.models import ai_operation_log


def log_row(request_id: str) -> dict[str, object]:
    return {
        "request_id": request_id, "user_id": "alice", "operation": "email-compose",
        "status": "ok", "latency_ms": 12.5, "cost_micro_usd": 4215,
        "created_at": datetime(2026, 11, 30, 6, 1, 2, tzinfo=UTC),
    }


def count(engine: Engine, table_name: str) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table_name}").scalar_one()


async def test_concurrent_appends_share_transactions(engine: Engine, ledger: Ledger) -> None:
    results = await asyncio.gather(
        *(ledger.append("intent", {"request_id": f"req-{i}"}) for i in range(64))
    )
    assert sorted(r.seq for r in results) == list(range(64))
    assert ledger.entries == 64 and 1 <= ledger.transactions < 64
    rows = ledger_rows(engine)
    assert [r[0] for r in rows] == list(range(64))
    assert {r.entry_hash for r in results} == {r[2] for r in rows}
    assert verify(engine).ok


def test_sync_appends_from_threads_form_one_chain(engine: Engine, ledger: Ledger) -> None:
    seqs: list[int] = []

    def work(t: int) -> None:
        for i in range(25):
            seqs.append(ledger.append_sync("intent", {"request_id": f"t{t}-{i}"}, timeout=30).seq)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seqs) == list(range(200))
    report = verify(engine)
    assert report.ok and report.entries == 200 and report.incomplete_intents == 200


async def test_extra_rows_commit_with_the_entry(engine: Engine, ledger: Ledger) -> None:
    entry = await ledger.append(
        "result", {"request_id": "req-1", "intent_seq": 0}, rows=[(ai_operation_log, log_row("req-1"))]
    )
    with engine.connect() as conn:
        row = conn.execute(select(ai_operation_log)).one()
    assert (entry.seq, row.request_id, row.cost_micro_usd) == (0, "req-1", 4215)
    assert decode_body(ledger_rows(engine)[0][3])["request_id"] == "req-1"


async def test_failed_transaction_fails_every_caller_and_writes_nothing(
    engine: Engine, clock: ManualClock
) -> None:
    execute(engine, "DROP TABLE ai_operation_log")
    ledger = Ledger(engine, clock)
    tasks = [asyncio.create_task(ledger.append("intent", {"request_id": f"plain-{i}"}))
             for i in range(10)]
    tasks += [
        asyncio.create_task(
            ledger.append("result", {"request_id": f"r-{i}"}, rows=[(ai_operation_log, log_row(f"r-{i}"))])
        )
        for i in range(2)
    ]
    await asyncio.sleep(0)  # all twelve queued before the writer starts: one batch
    ledger.start()
    try:
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, LedgerUnavailable) for o in outcomes), outcomes
        assert {(o.code, o.status) for o in outcomes} == {("audit_unavailable", 503)}
        assert count(engine, "ledger_entries") == 0 and ledger.transactions == 0
        after = await ledger.append("intent", {"request_id": "after"})  # the writer recovers
        assert after.seq == 0 and verify(engine).ok
    finally:
        ledger.close()


async def test_dropped_ledger_table_makes_appends_unavailable(engine: Engine, ledger: Ledger) -> None:
    await ledger.append("intent", {"request_id": "before"})
    execute(engine, "DROP TABLE ledger_entries")
    outcomes = await asyncio.gather(
        *(ledger.append("intent", {"request_id": f"r{i}"}) for i in range(16)),
        return_exceptions=True,
    )
    assert all(isinstance(o, LedgerUnavailable) for o in outcomes)


async def test_one_bad_row_does_not_sink_its_batch(engine: Engine, clock: ManualClock) -> None:
    ledger = Ledger(engine, clock)
    first = asyncio.create_task(
        ledger.append("result", {"request_id": "dup"}, rows=[(ai_operation_log, log_row("dup"))])
    )
    second = asyncio.create_task(
        ledger.append("result", {"request_id": "dup"}, rows=[(ai_operation_log, log_row("dup"))])
    )
    third = asyncio.create_task(ledger.append("intent", {"request_id": "fine"}))
    await asyncio.sleep(0)
    ledger.start()
    try:
        outcomes = await asyncio.gather(first, second, third, return_exceptions=True)
    finally:
        ledger.close()
    assert outcomes[0].seq == 0 and outcomes[2].seq == 1
    assert isinstance(outcomes[1], LedgerUnavailable)
    assert count(engine, "ai_operation_log") == 1 and verify(engine).entries == 2


async def test_close_commits_everything_queued(engine: Engine, clock: ManualClock) -> None:
    ledger = Ledger(engine, clock)
    ledger.start()
    tasks = [asyncio.create_task(ledger.append("intent", {"request_id": f"r{i}"})) for i in range(50)]
    await asyncio.sleep(0)
    await asyncio.to_thread(ledger.close)
    assert sorted(t.result().seq for t in tasks) == list(range(50))
    with pytest.raises(LedgerUnavailable):
        await ledger.append("intent", {"request_id": "late"})
    assert count(engine, "ledger_entries") == 50


async def test_close_before_start_fails_queued_appends(engine: Engine, clock: ManualClock) -> None:
    ledger = Ledger(engine, clock)
    task = asyncio.create_task(ledger.append("intent", {"request_id": "never"}))
    await asyncio.sleep(0)
    ledger.close()
    with pytest.raises(LedgerUnavailable):
        await task
    assert count(engine, "ledger_entries") == 0


async def test_cancelled_before_the_writer_takes_it_is_not_written(
    engine: Engine, clock: ManualClock
) -> None:
    ledger = Ledger(engine, clock)
    cancelled = asyncio.create_task(ledger.append("intent", {"request_id": "cancelled"}))
    kept = asyncio.create_task(ledger.append("intent", {"request_id": "kept"}))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    ledger.start()
    try:
        assert (await kept).seq == 0
    finally:
        ledger.close()
    assert [decode_body(r[3])["request_id"] for r in ledger_rows(engine)] == ["kept"]


async def test_amend_adds_the_work_results_fields_before_the_entry_is_chained(
    engine: Engine, ledger: Ledger
) -> None:
    def amend(choice: int) -> dict[str, object]:
        return {"degraded": True, "target": "deepseek/deepseek-flash"} if choice else {}

    plain, degraded = await asyncio.gather(
        ledger.append("intent", {"request_id": "r0"}, work=lambda conn: 0, amend=amend),
        ledger.append("intent", {"request_id": "r1"}, work=lambda conn: 1, amend=amend),
    )
    assert (plain.work_result, degraded.work_result) == (0, 1)
    bodies = [decode_body(r[3]) for r in ledger_rows(engine)]
    assert [(b["request_id"], b.get("degraded"), b.get("target")) for b in bodies] == [
        ("r0", None, None), ("r1", True, "deepseek/deepseek-flash")]
    assert verify(engine).ok


async def test_payload_is_copied_when_appended(engine: Engine, clock: ManualClock) -> None:
    ledger = Ledger(engine, clock)
    payload = {"request_id": "r", "policy": ["anthropic/claude-sonnet-4-5"]}
    task = asyncio.create_task(ledger.append("intent", payload))
    await asyncio.sleep(0)
    payload["policy"].append("deepseek/deepseek-chat")
    ledger.start()
    try:
        await task
    finally:
        ledger.close()
    assert decode_body(ledger_rows(engine)[0][3])["policy"] == ["anthropic/claude-sonnet-4-5"]


def test_counters_count_commits(engine: Engine, ledger: Ledger) -> None:
    for i in range(3):
        ledger.append_sync("intent", {"request_id": f"r{i}"})
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(ai_operation_log)).scalar_one()
    assert (ledger.transactions, ledger.entries, stored) == (3, 3, 0)


async def test_work_runs_on_a_connection_holding_the_append_lock(engine: Engine, ledger: Ledger) -> None:
    # metering's SQLite write-lock statement is skipped on exactly these connections
    appended = await ledger.append("intent", {"request_id": "req-locked"}, work=holds_write_lock)
    assert appended.work_result is True
    with engine.connect() as conn:
        assert holds_write_lock(conn) is False


def test_on_sqlite_the_writers_begin_takes_the_write_lock(sqlite_url: str) -> None:
    """SQLite: an append's transaction opens with ``BEGIN IMMEDIATE`` and nothing else before its
    work runs, and while it runs the database's write lock is held (another connection, not
    waiting, cannot begin a write)."""
    engine = make_engine(sqlite_url)
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: sent.append(statement))
    other = sqlite3.connect(make_url(sqlite_url).database or "", timeout=0, isolation_level=None,
                            check_same_thread=False)

    def work(conn: Connection) -> tuple[list[str], str]:
        before = list(sent)
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return before, str(exc)
        other.execute("ROLLBACK")
        return before, "not locked"

    with Ledger(engine, ManualClock()) as ledger:
        appended = ledger.append_sync("intent", {"request_id": "req-locked"}, work=work)
    other.close()
    engine.dispose()
    assert appended.work_result == (["BEGIN IMMEDIATE"], "database is locked")


class _Batched:
    """A work with a ``many``: each instance returns its ``value``, or refuses with ``refusal``;
    ``calls`` records the works each call of ``many`` got."""

    calls: list[list[str]] = []

    def __init__(self, value: str, refusal: OpsgateError | None = None) -> None:
        self.value, self.refusal = value, refusal

    def __call__(self, conn: Connection) -> str:
        raise AssertionError("a batchable work in a batch runs through many")

    @staticmethod
    def many(conn: Connection, works: list[_Batched]) -> list[str | OpsgateError]:
        _Batched.calls.append([w.value for w in works])
        return [w.refusal or w.value for w in works]


async def test_works_with_one_many_run_as_one_call_and_are_chained_together(
    engine: Engine, clock: ManualClock
) -> None:
    _Batched.calls = []
    ledger = Ledger(engine, clock)
    works: list[Any] = [_Batched("a"), lambda conn: "plain-1", _Batched("b", InvalidInput("no")),
                        lambda conn: "plain-2", _Batched("c")]
    tasks = [asyncio.create_task(ledger.append("intent", {"request_id": f"r{i}"}, work=work))
             for i, work in enumerate(works)]
    await asyncio.sleep(0)  # all five queued before the writer starts: one batch
    ledger.start()
    try:
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        ledger.close()
    assert _Batched.calls == [["a", "b", "c"]] and ledger.transactions == 1
    assert isinstance(outcomes[2], InvalidInput)  # refuses its own append only
    assert [(o.work_result, o.seq) for o in outcomes if not isinstance(o, Exception)] == [
        ("a", 2), ("plain-1", 0), ("plain-2", 1), ("c", 3)]
    assert [decode_body(r[3])["request_id"] for r in ledger_rows(engine)] == ["r1", "r3", "r0", "r4"]
    assert verify(engine).ok
