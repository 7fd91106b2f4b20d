"""A database restored from an older backup is behind its anchor: nothing is signed (a new
checkpoint would fork the log), the CLI says so with exit 1, and signing resumes only after an
explicit, ledgered ``opsgate ledger accept-rollback``."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.anchors import DirectoryAnchor
from opsgate.ledger.errors import LedgerRolledBack
from opsgate.ledger.scheduled import Checkpointer, accept_rollback, signer_for, verify_configured
from opsgate.ledger.service import latest_checkpoint
from opsgate.ledger.writer import Ledger
from opsgate.monitoring.rules import LEDGER, RuleConfig, evaluate
from opsgate.runtime import cli_services
from opsgate.store.db import make_engine
from opsgate.store.models import ledger_entries


def grow(settings: Settings, clock: ManualClock, entries: int) -> None:
    """Append ``entries`` intents, then sign and anchor a checkpoint of the whole log."""
    engine = make_engine(settings.database_url)
    ledger = Ledger(engine, clock)
    ledger.start()
    for i in range(entries):
        ledger.append_sync("intent", {"request_id": f"req-{i}", "user_id": "alice"})
    ledger.close()
    asyncio.run(checkpointer(settings, engine, clock).run_once(force=True))
    engine.dispose()


def copy_database(source: Path, target: Path) -> None:
    """SQLite's online backup API: what a backup and a restore of the whole database do."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def checkpointer(settings: Settings, engine: Engine, clock: ManualClock) -> Checkpointer:
    return Checkpointer(engine, signer_for(settings, create=True), settings.ledger_origin, clock,
                        [DirectoryAnchor(Path(settings.ledger_anchor_dir))])


def test_restored_database_behind_its_anchor_is_not_signed_until_accepted(
    settings: Settings, tmp_path: Path
) -> None:
    clock = ManualClock()
    db = tmp_path / "ledger.db"
    grow(settings, clock, 4)
    copy_database(db, tmp_path / "backup.db")  # the backup, taken at 4 anchored entries
    grow(settings, clock, 4)
    assert DirectoryAnchor(Path(settings.ledger_anchor_dir)).anchored_size() == 8
    copy_database(tmp_path / "backup.db", db)  # the restore

    engine = make_engine(settings.database_url)
    with pytest.raises(LedgerRolledBack) as refused:
        asyncio.run(checkpointer(settings, engine, clock).run_once(force=True))
    assert (refused.value.anchored_size, refused.value.log_size) == (8, 4)
    assert latest_checkpoint(engine).size == 4
    report = verify_configured(settings, engine)
    assert (report.failure.seq, report.failure.reason) == (4, "rolled_back")

    result = CliRunner().invoke(app, ["ledger", "checkpoint"])
    assert result.exit_code == 1 and "accept-rollback" in result.output

    ledger = Ledger(engine, clock)
    ledger.start()
    anchor = DirectoryAnchor(Path(settings.ledger_anchor_dir))
    assert asyncio.run(accept_rollback(engine, ledger, [anchor], clock, "restored last night's backup",
                                       "oncall")) == (8, 4)
    ledger.close()
    with engine.connect() as conn:
        last = json.loads(conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq.desc())).scalar())
    assert (last["kind"], last["anchored_size"], last["lost_entries"], last["actor"]) == (
        "ledger.rollback_accepted", 8, 4, "oncall")
    assert [p.name for p in Path(settings.ledger_anchor_dir).glob("rolled-back-*/*")] == [
        f"{8:020d}.checkpoint"]

    result = CliRunner().invoke(app, ["ledger", "checkpoint"])
    assert (result.exit_code, result.output.strip()) == (0, "checkpoint signed: size=5")
    assert verify_configured(settings, engine).ok
    engine.dispose()


def test_backup_restore_behind_its_anchor_raises_the_p1_itself(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the restore used to exit 1 and leave the page to the worker's next (hourly)
    ledger check. It opens the P1 itself, at the top escalation level, its pages queued."""
    monkeypatch.setenv("OPSGATE_MASTER_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    monkeypatch.setenv("OPSGATE_DISCORD_WEBHOOK_URL", "http://127.0.0.1:9/api/webhooks/1/restore-test")
    clock = ManualClock()
    grow(settings, clock, 4)
    runner = CliRunner()
    backup = tmp_path / "backup.ogb"
    assert runner.invoke(app, ["backup", "create", str(backup)]).exit_code == 0
    grow(settings, clock, 4)

    restored = runner.invoke(app, ["backup", "restore", str(backup)])
    said = " ".join(restored.output.split())  # rich wraps long lines
    assert restored.exit_code == 1 and "behind its anchor (8 > 4 entries), P1 incident inc-" in said
    with cli_services(Settings()) as services:
        [incident] = services.incidents.list(state="open")
        shown = services.incidents.show(incident["id"])
        # the worker's rule reads the same failed verification: the group stays firing, no second incident
        with services.engine.connect() as conn:
            findings = [f for f in evaluate(conn, services.clock.now(), RuleConfig(), set()) if f.rule == LEDGER]
        assert [(f.firing, services.incidents.observe(f)) for f in findings] == [(True, None)]
        assert len(services.incidents.list()) == 1
    assert (incident["rule"], incident["severity"], incident["title"]) == (
        "ledger_integrity", "P1", "Ledger verification failed")
    assert "rolled_back at seq 4" in shown["summary"]
    assert [n["channel"] for n in shown["notifications"]] == ["discord"]


def test_an_anchor_directory_not_created_yet_is_empty_until_something_is_anchored(
    settings: Settings, tmp_path: Path
) -> None:
    """Regression (found by bench/chaos.py): a worker verifying before the first checkpoint was
    anchored failed on the missing directory ('cannot verify: FileNotFoundError') and opened a P1.
    Once the database records an anchored size, a missing directory is an error again."""
    engine = make_engine(settings.database_url)
    ledger = Ledger(engine, ManualClock())
    ledger.start()
    ledger.append_sync("intent", {"request_id": "first"})
    ledger.close()
    signer_for(settings, create=True)
    assert not Path(settings.ledger_anchor_dir).exists()
    report = verify_configured(settings, engine)
    assert (report.ok, report.entries, report.anchored_size) == (True, 1, 0)
    grow(settings, ManualClock(), 1)  # signs and anchors: the directory now exists
    for anchored in Path(settings.ledger_anchor_dir).iterdir():
        anchored.unlink()
    Path(settings.ledger_anchor_dir).rmdir()
    with pytest.raises(FileNotFoundError):
        verify_configured(settings, engine)
    engine.dispose()
