"""Stored values of the wrong type or shape are tampering: ``verify`` reports ``bad_type`` naming the
table, the row and the column, and the other readers (``prove``, ``consistency``, checkpointing)
refuse with the same words — never a TypeError traceback.

SQLite keeps whatever storage class is written into any column, so each test signs and anchors a
real ledger file (``anchored_settings``: checkpoints at 4 and 8 entries, anchored in a directory),
then edits that file through a second, plain ``sqlite3`` connection (``tamper``), as someone with
file access would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.ledger.ledger_helpers import tamper

from opsgate.cli import app
from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.anchors import DirectoryAnchor
from opsgate.ledger.errors import StoredValueError
from opsgate.ledger.scheduled import signer_for
from opsgate.ledger.service import create_checkpoint, latest_checkpoint, leaf_hashes, log_size
from opsgate.ledger.verify import format_summary, verify
from opsgate.store.db import make_engine

def without_constraints(table: str, columns: str) -> list[str]:
    """Statements that rebuild ``table`` with untyped, unconstrained ``columns`` (so NULLs fit)."""
    return [f"CREATE TABLE tampered ({columns})", f"INSERT INTO tampered SELECT {columns} FROM {table}",
            f"DROP TABLE {table}", f"ALTER TABLE tampered RENAME TO {table}"]


def summaries(settings: Settings) -> set[str]:
    """verify's FAIL line, streamed and in parallel batches of 2 (the same finding both ways)."""
    engine = make_engine(settings.database_url)
    try:
        verifier = signer_for(settings, create=False).verifier()
        anchored = DirectoryAnchor(Path(settings.ledger_anchor_dir)).read()
        return {format_summary(verify(engine, verifier=verifier, anchored=anchored, batch_size=2,
                                      workers=workers)) for workers in (1, 2)}
    finally:
        engine.dispose()


@pytest.mark.parametrize(("edit", "expected"), [
    ("UPDATE ledger_checkpoints SET note = CAST(note AS TEXT) WHERE size = 4",
     "FAIL seq=3 reason=bad_type: ledger_checkpoints row size=4, column note holds TEXT, not BLOB"),
    ("UPDATE ledger_checkpoints SET root_hash = CAST(root_hash AS TEXT) WHERE size = 8",
     "FAIL seq=7 reason=bad_type: ledger_checkpoints row size=8, column root_hash holds TEXT, not BLOB"),
    ("UPDATE ledger_checkpoints SET root_hash = substr(root_hash, 1, 31) WHERE size = 4",
     "FAIL seq=3 reason=bad_type: ledger_checkpoints row size=4, column root_hash holds 31 bytes, not 32"),
    ("UPDATE ledger_checkpoints SET root_hash = 7 WHERE size = 4",
     "FAIL seq=3 reason=bad_type: ledger_checkpoints row size=4, column root_hash holds INTEGER, not BLOB"),
    ("UPDATE ledger_checkpoints SET size = 'x8' WHERE size = 8",  # '8' would be stored as 8 (affinity)
     "FAIL seq=0 reason=bad_type: ledger_checkpoints row size='x8', column size holds TEXT, not INTEGER"),
    ("UPDATE ledger_checkpoints SET size = 4.5 WHERE size = 4",
     "FAIL seq=0 reason=bad_type: ledger_checkpoints row size=4.5, column size holds REAL, not INTEGER"),
    ("UPDATE ledger_checkpoints SET size = -4 WHERE size = 4",
     "FAIL seq=0 reason=bad_type: ledger_checkpoints row size=-4, column size holds -4, below 0"),
    ("UPDATE ledger_entries SET entry_hash = 5 WHERE seq = 6",
     "FAIL seq=6 reason=bad_type: ledger_entries row seq=6, column entry_hash holds INTEGER, not BLOB"),
    ("UPDATE ledger_entries SET body = CAST(body AS TEXT) WHERE seq = 2",
     "FAIL seq=2 reason=bad_type: ledger_entries row seq=2, column body holds TEXT, not BLOB"),
    ("UPDATE ledger_entries SET seq = 7.5 WHERE seq = 7",  # 7.0 would be stored as 7 (affinity)
     "FAIL seq=7 reason=bad_type: ledger_entries row seq=7.5, column seq holds REAL, not INTEGER"),
])
def test_a_value_of_another_type_is_a_bad_type_failure_naming_row_and_column(
    anchored_settings: Settings, edit: str, expected: str
) -> None:
    tamper(anchored_settings, edit)
    assert summaries(anchored_settings) == {expected}


def test_nulls_in_a_rebuilt_table_are_bad_type(anchored_settings: Settings) -> None:
    tamper(anchored_settings, *without_constraints("ledger_checkpoints", "size, root_hash, note, frontier, created_at"),
           "UPDATE ledger_checkpoints SET note = NULL WHERE size = 8")
    assert summaries(anchored_settings) == {
        "FAIL seq=7 reason=bad_type: ledger_checkpoints row size=8, column note holds NULL, not BLOB"}
    tamper(anchored_settings, *without_constraints("ledger_entries", "seq, prev_hash, entry_hash, body"),
           "DELETE FROM ledger_checkpoints", "UPDATE ledger_entries SET seq = NULL WHERE seq = 5")
    # SQLite orders the NULL first: the row at position 0 is the one with no seq
    assert summaries(anchored_settings) == {
        "FAIL seq=0 reason=bad_type: ledger_entries row seq=None, column seq holds NULL, not INTEGER"}


def test_a_negative_seq_is_named_as_such_not_as_a_missing_entry(anchored_settings: Settings) -> None:
    """F11: ``seq=-1`` used to read "entry 0 is missing (next row is -1)"."""
    tamper(anchored_settings, "UPDATE ledger_entries SET seq = -1 WHERE seq = 0")
    assert summaries(anchored_settings) == {
        "FAIL seq=0 reason=bad_type: ledger_entries row seq=-1, column seq holds -1, below 0"}


def test_an_extra_row_below_seq_0_is_found_by_parallel_ranges_too(anchored_settings: Settings) -> None:
    """The parallel ranges used to read ``seq >= 0`` upwards: an added row -1 was never read, so
    the parallel check said OK while the streamed one failed."""
    tamper(anchored_settings, "INSERT INTO ledger_entries SELECT -1, randomblob(32), randomblob(32), body "
                     "FROM ledger_entries WHERE seq = 0")
    assert summaries(anchored_settings) == {
        "FAIL seq=0 reason=bad_type: ledger_entries row seq=-1, column seq holds -1, below 0"}


def test_a_tampered_type_does_not_hide_an_edited_entry(anchored_settings: Settings) -> None:
    """The tester's combination: an entry edited, and a checkpoint note stored as TEXT. The
    verification fails (it used to crash before reading any entry); with the note restored, the
    edit itself is reported."""
    tamper(anchored_settings, "UPDATE ledger_entries SET body = CAST(replace(body, 'alice', 'mallo') AS BLOB) "
                     "WHERE seq = 2",
           "UPDATE ledger_checkpoints SET note = CAST(note AS TEXT) WHERE size = 4")
    assert summaries(anchored_settings) == {
        "FAIL seq=3 reason=bad_type: ledger_checkpoints row size=4, column note holds TEXT, not BLOB"}
    tamper(anchored_settings, "UPDATE ledger_checkpoints SET note = CAST(note AS BLOB) WHERE size = 4")
    assert summaries(anchored_settings) == {
        "FAIL seq=2 reason=hash_mismatch: stored entry_hash does not match the body"}


def test_cli_verify_prove_and_consistency_report_instead_of_crashing(anchored_settings: Settings) -> None:
    tamper(anchored_settings, "UPDATE ledger_checkpoints SET note = CAST(note AS TEXT) WHERE size = 8")
    runner = CliRunner()
    verified = runner.invoke(app, ["ledger", "verify"])
    assert (verified.exit_code, verified.output.strip()) == (
        1, "FAIL seq=7 reason=bad_type: ledger_checkpoints row size=8, column note holds TEXT, not BLOB")
    for command in (["ledger", "consistency", "4", "8"], ["ledger", "prove", "5"]):
        result = runner.invoke(app, command)
        assert (result.exit_code, result.output.strip()) == (1, (
            "error: the ledger was tampered with: ledger_checkpoints row size=8, column note holds TEXT, "
            "not BLOB")), command
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_service_readers_refuse_with_the_row_and_column(anchored_settings: Settings) -> None:
    tamper(anchored_settings, "UPDATE ledger_checkpoints SET frontier = 'abc' WHERE size = 8",
           "UPDATE ledger_entries SET prev_hash = 'x' WHERE seq = 1")
    engine = make_engine(anchored_settings.database_url)
    signer = signer_for(anchored_settings, create=False)
    with pytest.raises(StoredValueError, match=r"^ledger_checkpoints row size=8, column frontier holds TEXT, not BLOB$"):
        create_checkpoint(engine, signer, anchored_settings.ledger_origin, ManualClock())
    with pytest.raises(StoredValueError, match=r"^ledger_entries row seq=1, column prev_hash holds TEXT, not BLOB$"):
        leaf_hashes(engine, 4)
    assert latest_checkpoint(engine).size == 8
    tamper(anchored_settings, "UPDATE ledger_entries SET seq = 'z' WHERE seq = 7")
    with pytest.raises(StoredValueError, match=r"^ledger_entries max\(seq\) holds TEXT, not INTEGER$"):
        log_size(engine)
    engine.dispose()
