"""verify(): every kind of tampering is found at the right seq with the right reason."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from datetime import timedelta

import pytest
from sqlalchemy import Engine, insert
from tests.ledger.ledger_helpers import execute, ledger_rows

from opsgate.clock import ManualClock
from opsgate.ledger.entry import chain_entry, encode_body
from opsgate.ledger.errors import LedgerIOError
from opsgate.ledger.verify import format_summary, verify
from opsgate.ledger.writer import Ledger
from opsgate.store.models import ledger_entries

DOMAIN = b"opsgate.ledger.v1.chain\x00"


def fill(ledger: Ledger, pairs: int = 4) -> None:
    """``pairs`` intent/result pairs: seqs 0..2*pairs-1, intents even, results odd."""
    for i in range(pairs):
        intent = ledger.append_sync("intent", {"request_id": f"req-{i}", "user_id": "alice"})
        ledger.append_sync(
            "result", {"request_id": f"req-{i}", "intent_seq": intent.seq, "status": "ok"}
        )


def test_intact_chain_verifies(engine: Engine, ledger: Ledger) -> None:
    fill(ledger)
    report = verify(engine)
    rows = ledger_rows(engine)
    assert report.ok and report.failure is None
    assert (report.entries, report.head_seq, report.head_hash) == (8, 7, rows[-1][2])
    assert report.incomplete_intents == 0 and report.warning_count == 0
    assert format_summary(report) == (
        f"OK entries=8 head=7 hash={rows[-1][2].hex()} checkpoints=0 anchored=0 unanchored=8 warnings=0 incomplete=0"
    )


def test_parallel_workers_are_never_forks_of_the_caller(
    engine: Engine, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork copies every lock as another thread holds it at that instant: a worker forked while
    a gateway thread was inside SQLite waited forever on SQLite's allocator mutex, and verify (and
    a rehearsal's last step) with it. The workers come from a forkserver: this process never forks."""
    fill(ledger, pairs=8)
    forks: list[int] = []
    fork = os.fork

    def counted_fork() -> int:
        forks.append(1)
        return fork()

    monkeypatch.setattr(os, "fork", counted_fork)
    report = verify(engine, batch_size=4, workers=2)
    assert (report.ok, report.entries, report.head_hash, forks) == (True, 16, ledger_rows(engine)[-1][2], [])


def test_empty_ledger_verifies(engine: Engine) -> None:
    report = verify(engine)
    assert (report.ok, report.entries, report.head_seq, report.head_hash) == (True, 0, None, None)
    assert format_summary(report) == "OK entries=0 head=none hash=none checkpoints=0 anchored=0 unanchored=0 warnings=0 incomplete=0"


def test_edited_payload_byte_is_a_hash_mismatch(engine: Engine, ledger: Ledger) -> None:
    fill(ledger)
    body = ledger_rows(engine)[3][3]
    execute(engine, "UPDATE ledger_entries SET body = :b WHERE seq = 3",
            b=body.replace(b'"status":"ok"', b'"status":"no"'))
    report = verify(engine)
    assert not report.ok
    assert (report.failure.seq, report.failure.reason) == (3, "hash_mismatch")
    assert verify(engine, batch_size=2, workers=2).failure == report.failure
    assert (report.head_seq, report.entries) == (2, 4)
    assert format_summary(report).startswith("FAIL seq=3 reason=hash_mismatch: ")


def test_edited_hash_is_a_hash_mismatch(engine: Engine, ledger: Ledger) -> None:
    fill(ledger)
    execute(engine, "UPDATE ledger_entries SET entry_hash = :h WHERE seq = 5", h=b"\x01" * 32)
    report = verify(engine)
    assert (report.failure.seq, report.failure.reason) == (5, "hash_mismatch")


def test_rewritten_entry_with_fresh_hash_breaks_the_next_link(engine: Engine, ledger: Ledger) -> None:
    fill(ledger)
    seq, prev_hash, _, body = ledger_rows(engine)[2]
    forged = body.replace(b'"user_id":"alice"', b'"user_id":"mallory"')
    new_hash = hashlib.sha256(DOMAIN + prev_hash + forged).digest()
    execute(engine, "UPDATE ledger_entries SET body = :b, entry_hash = :h WHERE seq = :s",
            b=forged, h=new_hash, s=seq)
    report = verify(engine)
    assert (report.failure.seq, report.failure.reason) == (3, "link_mismatch")
    assert report.head_seq == 2 and report.head_hash == new_hash


def test_deleted_middle_entry_is_a_seq_gap(engine: Engine, ledger: Ledger) -> None:
    fill(ledger)
    execute(engine, "DELETE FROM ledger_entries WHERE seq = 4")
    report = verify(engine)
    assert (report.failure.seq, report.failure.reason) == (4, "seq_gap")
    assert "next row is 5" in report.failure.detail


def test_deleted_first_entry_is_a_seq_gap_at_zero(engine: Engine, ledger: Ledger) -> None:
    fill(ledger)
    execute(engine, "DELETE FROM ledger_entries WHERE seq = 0")
    report = verify(engine)
    assert (report.failure.seq, report.failure.reason, report.head_seq) == (0, "seq_gap", None)


def test_swapped_bodies_are_a_seq_mismatch(engine: Engine, ledger: Ledger) -> None:
    fill(ledger)
    rows = ledger_rows(engine)
    execute(engine, "UPDATE ledger_entries SET body = :b WHERE seq = 5", b=rows[6][3])
    execute(engine, "UPDATE ledger_entries SET body = :b WHERE seq = 6", b=rows[5][3])
    report = verify(engine)
    assert (report.failure.seq, report.failure.reason) == (5, "seq_mismatch")
    assert report.failure.detail == "row 5 holds the body of entry 6"


def test_body_with_a_different_seq_field_is_a_seq_mismatch(engine: Engine, ledger: Ledger) -> None:
    fill(ledger)
    _, prev_hash, _, body = ledger_rows(engine)[1]
    forged = body.replace(b'"seq":1,', b'"seq":9,')
    execute(engine, "UPDATE ledger_entries SET body = :b, entry_hash = :h WHERE seq = 1",
            b=forged, h=hashlib.sha256(DOMAIN + prev_hash + forged).digest())
    report = verify(engine)
    assert (report.failure.seq, report.failure.reason) == (1, "seq_mismatch")


@pytest.mark.parametrize(
    "forged",
    [
        b"not json",
        b'{"kind":"intent", "seq":2,"ts":"2026-11-30T06:01:02.123456Z","v":1}',  # whitespace
        b'{"kind":"intent","seq":2,"ts":"2026-11-30T06:01:02.123456Z","v":1.0}',  # float
        b'{"seq":2,"kind":"intent","ts":"2026-11-30T06:01:02.123456Z","v":1}',  # key order
        b'{"kind":"intent","seq":2,"ts":"2026-11-30 06:01:02Z","v":1}',  # ts format
        b'{"kind":"intent","seq":2,"ts":"2026-11-30T06:01:02.123456Z","v":2}',  # version
        b'{"kind":"caf\\u00e9","seq":2,"ts":"2026-11-30T06:01:02.123456Z","v":1}',  # escape
        b'{"kind":"intent","seq":2,"ts":"2026-11-30T06:01:02.123456Z","v":1}\xff',  # not UTF-8
    ],
)
def test_non_canonical_body_is_a_bad_body(engine: Engine, ledger: Ledger, forged: bytes) -> None:
    fill(ledger, pairs=2)
    prev_hash = ledger_rows(engine)[2][1]
    execute(engine, "UPDATE ledger_entries SET body = :b, entry_hash = :h WHERE seq = 2",
            b=forged, h=hashlib.sha256(DOMAIN + prev_hash + forged).digest())
    report = verify(engine)
    assert (report.failure.seq, report.failure.reason) == (2, "bad_body")


def test_intents_without_results_are_counted(engine: Engine, ledger: Ledger) -> None:
    fill(ledger, pairs=2)
    ledger.append_sync("intent", {"request_id": "req-open-1"})
    ledger.append_sync("intent", {"request_id": "req-open-2"})
    ledger.append_sync("result", {"request_id": "req-open-2", "intent_seq": 5})
    report = verify(engine)
    assert report.ok and report.incomplete_intents == 1
    assert format_summary(report).endswith("warnings=0 incomplete=1")


def test_clock_regression_is_a_warning_not_a_failure(engine: Engine) -> None:
    """Bodies written by another writer whose clock went back: warned, still intact."""
    prev, rows = bytes(32), []
    for seq, ts in enumerate(["2026-11-30T06:00:05.000000Z", "2026-11-30T06:00:04.000000Z"]):
        entry = chain_entry(seq, prev, encode_body(seq, ts, "intent", {"request_id": f"r{seq}"}))
        rows.append({"seq": seq, "prev_hash": prev, "entry_hash": entry.entry_hash,
                     "body": entry.body})
        prev = entry.entry_hash
    with engine.begin() as conn:
        conn.execute(insert(ledger_entries), rows)
    report = verify(engine)
    assert report.ok and report.warning_count == 1
    assert (report.warnings[0].seq, report.warnings[0].reason) == (1, "clock_regression")
    assert "warnings=1 incomplete=2" in format_summary(report)


def test_writer_clamps_ts_when_the_clock_goes_back(
    engine: Engine, ledger: Ledger, clock: ManualClock
) -> None:
    first = ledger.append_sync("intent", {"request_id": "a"})
    clock.advance(-3600)
    second = ledger.append_sync("intent", {"request_id": "b"})
    assert second.ts == first.ts
    assert verify(engine).warning_count == 0
    clock.advance(7200)
    assert ledger.append_sync("intent", {"request_id": "c"}).ts == first.ts + timedelta(hours=1)


def test_missing_table_is_an_io_error(engine: Engine) -> None:
    execute(engine, "DROP TABLE ledger_entries")
    with pytest.raises(LedgerIOError) as caught:
        verify(engine)
    assert caught.value.code == "audit_unavailable"


def test_progress_is_reported_per_batch(engine: Engine, ledger: Ledger) -> None:
    fill(ledger, pairs=5)
    seen: list[int] = []
    assert verify(engine, batch_size=3, progress=seen.append).entries == 10  # 3 -> 4 rows
    assert seen == [4, 8, 10]


def test_streaming_keeps_memory_bounded(engine: Engine) -> None:
    """40,000 entries (~12 MB of bodies, ~20 MB as rows) verify within 4 MB of allocations."""
    total, prev, batch = 40_000, bytes(32), []
    with engine.begin() as conn:
        for seq in range(total):
            kind = "intent" if seq % 2 == 0 else "result"
            body = encode_body(seq, "2026-11-30T06:01:02.123456Z", kind,
                               {"request_id": f"req-{seq // 2:08d}", "input_sha256": "ab" * 32,
                                "user_id": "user-with-a-long-identifier-0123456789"})
            entry = chain_entry(seq, prev, body)
            batch.append({"seq": seq, "prev_hash": prev, "entry_hash": entry.entry_hash,
                          "body": body})
            prev = entry.entry_hash
            if len(batch) == 5000:
                conn.execute(insert(ledger_entries), batch)
                batch = []
    tracemalloc.start()
    try:
        report = verify(engine, batch_size=1000, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.entries == total and report.head_hash == prev
    assert report.incomplete_intents == 0
    assert peak < 4 * 1024 * 1024, peak
