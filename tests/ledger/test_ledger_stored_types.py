"""Stored values of the wrong type or shape are tampering: ``verify`` reports ``bad_type`` naming the
table, the row and the column, and the other readers (``prove``, ``consistency``, checkpointing)
refuse with the same words — never a TypeError traceback.

SQLite keeps whatever storage class is written into any column, so each test signs and anchors a
real ledger file (checkpoints at 4 and 8 entries), then edits that file through a second,
plain ``sqlite3`` connection, as someone with file access would (the triggers are dropped first).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.anchors import DirectoryAnchor
from opsgate.ledger.errors import StoredValueError
from opsgate.ledger.scheduled import Checkpointer, signer_for, verify_configured
from opsgate.ledger.service import create_checkpoint, latest_checkpoint, leaf_hashes, log_size
from opsgate.ledger.verify import format_summary, verify
from opsgate.ledger.writer import Ledger
from opsgate.store.db import make_engine, upgrade

TRIGGERS = "SELECT name FROM sqlite_master WHERE type = 'trigger'"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
           "OPSGATE_LEDGER_SIGNING_KEY_FILE": str(tmp_path / "ledger.key"),
           "OPSGATE_LEDGER_ANCHOR_DIR": str(tmp_path / "anchors")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    upgrade(env["OPSGATE_DATABASE_URL"])
    settings = Settings()
    engine = make_engine(settings.database_url)
    clock = ManualClock()
    checkpointer = Checkpointer(engine, signer_for(settings, create=True), settings.ledger_origin,
                                clock, [DirectoryAnchor(Path(settings.ledger_anchor_dir))])
    with Ledger(engine, clock) as ledger:
        for i in range(8):
            ledger.append_sync("intent", {"request_id": f"req-{i}", "user_id": "alice"})
            if i in (3, 7):
                asyncio.run(checkpointer.run_once(force=True))
    assert verify_configured(settings, engine).ok
    engine.dispose()
    return settings


def tamper(settings: Settings, *statements: str) -> None:
    """Run ``statements`` on the database file through a second connection, triggers dropped."""
    path = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        for (name,) in conn.execute(TRIGGERS).fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        for statement in statements:
            conn.execute(statement)
    conn.close()


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
    settings: Settings, edit: str, expected: str
) -> None:
    tamper(settings, edit)
    assert summaries(settings) == {expected}


def test_nulls_in_a_rebuilt_table_are_bad_type(settings: Settings) -> None:
    tamper(settings, *without_constraints("ledger_checkpoints", "size, root_hash, note, frontier, created_at"),
           "UPDATE ledger_checkpoints SET note = NULL WHERE size = 8")
    assert summaries(settings) == {
        "FAIL seq=7 reason=bad_type: ledger_checkpoints row size=8, column note holds NULL, not BLOB"}
    tamper(settings, *without_constraints("ledger_entries", "seq, prev_hash, entry_hash, body"),
           "DELETE FROM ledger_checkpoints", "UPDATE ledger_entries SET seq = NULL WHERE seq = 5")
    # SQLite orders the NULL first: the row at position 0 is the one with no seq
    assert summaries(settings) == {
        "FAIL seq=0 reason=bad_type: ledger_entries row seq=None, column seq holds NULL, not INTEGER"}


def test_a_negative_seq_is_named_as_such_not_as_a_missing_entry(settings: Settings) -> None:
    """F11: ``seq=-1`` used to read "entry 0 is missing (next row is -1)"."""
    tamper(settings, "UPDATE ledger_entries SET seq = -1 WHERE seq = 0")
    assert summaries(settings) == {
        "FAIL seq=0 reason=bad_type: ledger_entries row seq=-1, column seq holds -1, below 0"}


def test_an_extra_row_below_seq_0_is_found_by_parallel_ranges_too(settings: Settings) -> None:
    """The parallel ranges used to read ``seq >= 0`` upwards: an added row -1 was never read, so
    the parallel check said OK while the streamed one failed."""
    tamper(settings, "INSERT INTO ledger_entries SELECT -1, randomblob(32), randomblob(32), body "
                     "FROM ledger_entries WHERE seq = 0")
    assert summaries(settings) == {
        "FAIL seq=0 reason=bad_type: ledger_entries row seq=-1, column seq holds -1, below 0"}


def test_a_tampered_type_does_not_hide_an_edited_entry(settings: Settings) -> None:
    """The tester's combination: an entry edited, and a checkpoint note stored as TEXT. The
    verification fails (it used to crash before reading any entry); with the note restored, the
    edit itself is reported."""
    tamper(settings, "UPDATE ledger_entries SET body = CAST(replace(body, 'alice', 'mallo') AS BLOB) "
                     "WHERE seq = 2",
           "UPDATE ledger_checkpoints SET note = CAST(note AS TEXT) WHERE size = 4")
    assert summaries(settings) == {
        "FAIL seq=3 reason=bad_type: ledger_checkpoints row size=4, column note holds TEXT, not BLOB"}
    tamper(settings, "UPDATE ledger_checkpoints SET note = CAST(note AS BLOB) WHERE size = 4")
    assert summaries(settings) == {
        "FAIL seq=2 reason=hash_mismatch: stored entry_hash does not match the body"}


def test_cli_verify_prove_and_consistency_report_instead_of_crashing(settings: Settings) -> None:
    tamper(settings, "UPDATE ledger_checkpoints SET note = CAST(note AS TEXT) WHERE size = 8")
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


def test_service_readers_refuse_with_the_row_and_column(settings: Settings) -> None:
    tamper(settings, "UPDATE ledger_checkpoints SET frontier = 'abc' WHERE size = 8",
           "UPDATE ledger_entries SET prev_hash = 'x' WHERE seq = 1")
    engine = make_engine(settings.database_url)
    signer = signer_for(settings, create=False)
    with pytest.raises(StoredValueError, match=r"^ledger_checkpoints row size=8, column frontier holds TEXT, not BLOB$"):
        create_checkpoint(engine, signer, settings.ledger_origin, ManualClock())
    with pytest.raises(StoredValueError, match=r"^ledger_entries row seq=1, column prev_hash holds TEXT, not BLOB$"):
        leaf_hashes(engine, 4)
    assert latest_checkpoint(engine).size == 8
    tamper(settings, "UPDATE ledger_entries SET seq = 'z' WHERE seq = 7")
    with pytest.raises(StoredValueError, match=r"^ledger_entries max\(seq\) holds TEXT, not INTEGER$"):
        log_size(engine)
    engine.dispose()
