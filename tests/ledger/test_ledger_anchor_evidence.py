"""An anchor is evidence outside the database: a checkpoint the database records as posted to the
directory anchor that the directory no longer holds (deleted, or replaced by another note) fails
``verify`` with ``anchor_mismatch`` (exit 1), as does a file filed under another size than its
note's. And ``opsgate ledger checkpoint`` verifies the log first and signs nothing over a log that
does not verify (tester F6, F11)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import Engine
from tests.ledger.ledger_helpers import ledger_rows, tamper
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.entry import chain_entry
from opsgate.ledger.scheduled import verify_configured
from opsgate.ledger.service import latest_checkpoint
from opsgate.ledger.verify import format_summary
from opsgate.ledger.writer import Ledger
from opsgate.store.db import make_engine

MISSING = ("reason=anchor_mismatch: the database records the checkpoints of size {} as posted to the "
           "directory anchor, which does not hold them (deleted, or replaced by another note)")


def anchor_file(settings: Settings, size: int) -> Path:
    return Path(settings.ledger_anchor_dir) / f"{size:020d}.checkpoint"


def verified(settings: Settings) -> tuple[int, str]:
    """``opsgate ledger verify``: exit status and its line; the worker's check gives the same."""
    result = CliRunner().invoke(app, ["ledger", "verify"])
    engine = make_engine(settings.database_url)
    assert format_summary(verify_configured(settings, engine)) == result.output.strip()
    engine.dispose()
    return result.exit_code, result.output.strip()


def test_the_newest_anchor_file_deleted(anchored_settings: Settings) -> None:
    anchor_file(anchored_settings, 8).unlink()
    assert verified(anchored_settings) == (1, "FAIL seq=7 " + MISSING.format("8"))


def test_every_anchor_file_deleted(anchored_settings: Settings) -> None:
    for size in (4, 8):
        anchor_file(anchored_settings, size).unlink()
    assert verified(anchored_settings) == (1, "FAIL seq=3 " + MISSING.format("4, 8"))


def test_an_older_note_copied_over_the_newest_file(anchored_settings: Settings) -> None:
    shutil.copyfile(anchor_file(anchored_settings, 4), anchor_file(anchored_settings, 8))
    assert verified(anchored_settings) == (1, (
        f"FAIL seq=3 reason=anchor_mismatch: {anchor_file(anchored_settings, 8)} is filed as the "
        f"checkpoint of size 8 but holds the one of size 4"))


def test_an_anchored_size_without_its_file(anchored_settings: Settings) -> None:
    """``ledger_anchor_state`` says 8 was anchored even when its record row is gone."""
    tamper(anchored_settings, "DELETE FROM ledger_anchor_records WHERE size = 8")
    anchor_file(anchored_settings, 8).unlink()
    assert verified(anchored_settings) == (1, "FAIL seq=7 " + MISSING.format("8"))


def test_entry_tampering_is_reported_before_the_anchor(anchored_settings: Settings) -> None:
    tamper(anchored_settings, "UPDATE ledger_entries SET body = CAST(replace(body, 'alice', 'mallo') AS BLOB) "
                              "WHERE seq = 2")
    anchor_file(anchored_settings, 8).unlink()
    assert verified(anchored_settings) == (
        1, "FAIL seq=2 reason=hash_mismatch: stored entry_hash does not match the body")


def rechain_after_editing(engine: Engine, settings: Settings, seq: int) -> None:
    """Edit entry ``seq`` and recompute every later chain hash, so the chain alone looks intact."""
    rows = ledger_rows(engine)
    prev = rows[seq][1]
    statements = []
    for row_seq, _, _, body in rows[seq:]:
        if row_seq == seq:
            body = body.replace(b"alice", b"mallo")
        entry = chain_entry(row_seq, prev, body)
        statements.append(f"UPDATE ledger_entries SET body = X'{body.hex()}', prev_hash = X'{prev.hex()}', "
                          f"entry_hash = X'{entry.entry_hash.hex()}' WHERE seq = {row_seq}")
        prev = entry.entry_hash
    tamper(settings, *statements)


def test_checkpoint_refuses_to_sign_over_a_log_that_does_not_verify(anchored_settings: Settings) -> None:
    engine = make_engine(anchored_settings.database_url)
    rechain_after_editing(engine, anchored_settings, 2)
    with Ledger(engine, ManualClock()) as ledger:  # something new to sign
        ledger.append_sync("intent", {"request_id": "late", "user_id": "alice"})
    result = CliRunner().invoke(app, ["ledger", "checkpoint"])
    assert result.exit_code == 1
    assert " ".join(result.output.split()) == (
        "error: refusing to sign over a log that does not verify: FAIL seq=0 reason=root_mismatch: "
        "entries 0..3 differ from the signed checkpoint of size 4 (database)")
    assert latest_checkpoint(engine).size == 8
    engine.dispose()


def test_an_anchor_record_of_the_wrong_type_is_bad_type(anchored_settings: Settings) -> None:
    tamper(anchored_settings, "UPDATE ledger_anchor_records SET size = 'x' WHERE size = 8")
    assert verified(anchored_settings) == (1, (
        "FAIL seq=0 reason=bad_type: ledger_anchor_records row anchor='directory', size='x', column size "
        "holds TEXT, not INTEGER"))
