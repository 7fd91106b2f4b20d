"""The worker's periodic ledger verification fails closed: tampering that verification reports
(here a checkpoint note stored as TEXT, which used to raise a TypeError out of the tick) and any
exception verification raises are both a failed ``ledger_verify`` signal and the P1
``ledger_integrity`` incident; the exception is logged through the sanitizer."""

from __future__ import annotations

import io
import logging
import secrets
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.monitoring.worker_env import Env, anchored_worker

from opsgate.monitoring import worker as worker_module
from opsgate.monitoring.models import signals
from opsgate.security.logging import configure_logging

KEY = "sk-ant-api03-" + secrets.token_urlsafe(40)


def ledger_signals(env: Env) -> list[tuple[bool, str]]:
    with env.engine.connect() as conn:
        return [(r.ok, r.detail) for r in conn.execute(
            select(signals.c.ok, signals.c.detail).where(signals.c.kind == "ledger_verify").order_by(signals.c.id))]


async def test_a_note_stored_as_text_is_a_failed_check_and_a_p1(env: Env, tmp_path: Path) -> None:
    worker = await anchored_worker(env, tmp_path)
    with sqlite3.connect(tmp_path / "mon.db") as conn:  # a second connection, as file access allows
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("UPDATE ledger_checkpoints SET note = CAST(note AS TEXT)")
    conn.close()
    assert await worker.tick()
    assert ledger_signals(env) == [(False, "0 entries: bad_type at seq 5")]
    [incident] = worker.incidents.list()
    assert (incident["rule"], incident["severity"], incident["title"]) == (
        "ledger_integrity", "P1", "Ledger verification failed")


async def test_any_exception_in_verification_fails_closed_and_is_logged_sanitized(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = await anchored_worker(env, tmp_path)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"something nobody expected near {KEY}")

    monkeypatch.setattr(worker_module, "verify_configured", broken)
    configure_logging("INFO")  # what `opsgate worker` does at start
    handler = logging.getLogger().handlers[-1]
    handler.setStream(io.StringIO())  # type: ignore[attr-defined]
    try:
        assert await worker.tick()
    finally:
        logging.getLogger().removeHandler(handler)
        logging.setLogRecordFactory(logging.LogRecord)
    assert ledger_signals(env) == [(False, "cannot verify: RuntimeError")]
    [incident] = worker.incidents.list()
    assert (incident["rule"], incident["severity"]) == ("ledger_integrity", "P1")
    [record] = [r for r in caplog.records if r.name == "opsgate.monitoring" and r.levelno == logging.ERROR]
    assert record.getMessage() == "ledger verification could not run: RuntimeError"
    assert "something nobody expected near" in record.exc_text and KEY not in record.exc_text
    assert "worker tick failed" not in caplog.text
