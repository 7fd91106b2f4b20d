"""verify(): corrupt stored values are tampering, reported as a FAIL line naming the seq, never a
crash (a flipped bit in a seq, a body or hash rewritten with another storage type)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from tests.ledger.ledger_helpers import execute, ledger_rows

from opsgate.clock import ManualClock
from opsgate.ledger.verify import format_summary, verify
from opsgate.ledger.writer import Ledger
from opsgate.store.db import make_engine


def fill(ledger: Ledger, entries: int = 8) -> None:
    for i in range(entries):
        ledger.append_sync("intent", {"request_id": f"req-{i}", "user_id": "alice"})


@pytest.fixture
def sqlite_ledger(sqlite_url: str, clock: ManualClock) -> Iterator[tuple[Engine, Ledger]]:
    """SQLite only: its columns take a value of any storage type, PostgreSQL's refuse them."""
    engine = make_engine(sqlite_url)
    ledger = Ledger(engine, clock)
    ledger.start()
    yield engine, ledger
    ledger.close()
    engine.dispose()


@pytest.mark.parametrize("workers", [1, 2])
def test_flipped_high_bit_in_a_seq_is_a_gap_not_an_out_of_memory(
    engine: Engine, ledger: Ledger, workers: int
) -> None:
    fill(ledger)
    execute(engine, "UPDATE ledger_entries SET seq = :s WHERE seq = 5", s=5 | (1 << 40))
    report = verify(engine, batch_size=2, workers=workers)
    assert (report.failure.seq, report.failure.reason) == (5, "seq_gap")
    assert format_summary(report).startswith("FAIL seq=5 reason=seq_gap: ")


def test_body_rewritten_as_text_is_bad_type(sqlite_ledger: tuple[Engine, Ledger]) -> None:
    engine, ledger = sqlite_ledger
    fill(ledger)
    body = ledger_rows(engine)[3][3]
    execute(engine, "UPDATE ledger_entries SET body = :b WHERE seq = 3", b=body.decode())
    report = verify(engine)
    assert (report.failure.seq, report.failure.reason) == (3, "bad_type")
    assert format_summary(report) == (
        "FAIL seq=3 reason=bad_type: ledger_entries row seq=3, column body holds TEXT, not BLOB"
    )


def test_hash_rewritten_as_integer_is_bad_type(sqlite_ledger: tuple[Engine, Ledger]) -> None:
    engine, ledger = sqlite_ledger
    fill(ledger)
    execute(engine, "UPDATE ledger_entries SET prev_hash = 7 WHERE seq = 2")
    report = verify(engine, batch_size=2, workers=2)
    assert (report.failure.seq, report.failure.reason) == (2, "bad_type")
