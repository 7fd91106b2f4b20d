"""Encrypted backups of SQLite (online backup API) and PostgreSQL (pg_dump): create, verify into a
scratch database with the ledger check, restore; tampering, truncation and a wrong key fail."""

from __future__ import annotations

import base64
import secrets
import uuid

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, select, text

from opsgate.clock import ManualClock
from opsgate.ledger.writer import Ledger
from opsgate.security.backup import MAGIC, create, restore, verify_backup
from opsgate.security.errors import BackupError
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ledger_entries
from opsgate.testing import gateway_settings


def _fill_ledger(url: str, n: int) -> None:
    engine = make_engine(url)
    ledger = Ledger(engine, ManualClock())
    ledger.start()
    try:
        for i in range(n):
            ledger.append_sync("test.entry", {"i": i, "note": "x" * 2000})
    finally:
        ledger.close()
        engine.dispose()


@pytest.fixture
def sqlite_settings(tmp_path):
    settings = gateway_settings(tmp_path)
    upgrade(settings.database_url)
    _fill_ledger(settings.database_url, 700)  # > 1 MiB: several encrypted chunks
    return settings


def test_sqlite_backup_is_encrypted_verifies_and_restores(sqlite_settings, tmp_path):
    out = tmp_path / "backup.ogb"
    size = create(sqlite_settings, out)
    raw = out.read_bytes()
    assert raw.startswith(MAGIC + b"S") and size > 1 << 20
    assert b"SQLite format 3" not in raw and b"test.entry" not in raw
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    found = verify_backup(sqlite_settings, out)
    assert found.kind == "sqlite" and found.report.ok and found.report.entries == 700
    target = tmp_path / "restored.db"
    restore(sqlite_settings, out, f"sqlite:///{target}")
    engine = make_engine(f"sqlite:///{target}")
    with engine.connect() as conn:
        assert conn.execute(select(ledger_entries.c.seq).order_by(ledger_entries.c.seq.desc())).first()[0] == 699
    engine.dispose()


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop_last_chunk", "swap_chunks"])
def test_damaged_backups_fail_to_verify(sqlite_settings, tmp_path, damage):
    out = tmp_path / "backup.ogb"
    create(sqlite_settings, out)
    raw = bytearray(out.read_bytes())
    header, sealed = 18, (1 << 20) + 16
    if damage == "flip":
        raw[len(raw) // 2] ^= 1
    elif damage == "truncate":
        raw = raw[:-1]
    elif damage == "drop_last_chunk":
        raw = raw[: header + sealed]
    else:
        raw = raw[:header] + raw[header + sealed : header + 2 * sealed] + raw[header : header + sealed] + raw[header + 2 * sealed :]
    out.write_bytes(bytes(raw))
    with pytest.raises(BackupError, match="damaged"):
        verify_backup(sqlite_settings, out)


def test_another_master_key_cannot_read_the_backup(sqlite_settings, tmp_path):
    out = tmp_path / "backup.ogb"
    create(sqlite_settings, out)
    other = sqlite_settings.model_copy(update={"master_key": SecretStr(base64.b64encode(secrets.token_bytes(32)).decode())})
    with pytest.raises(BackupError, match="another master key"):
        verify_backup(other, out)


def test_a_tampered_ledger_in_the_backup_is_reported(sqlite_settings, tmp_path):
    engine = make_engine(sqlite_settings.database_url)
    with engine.begin() as conn:  # someone with the file drops the append-only triggers first
        triggers = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ledger_entries'")).scalars().all()
        for name in triggers:
            conn.execute(text(f'DROP TRIGGER "{name}"'))
        conn.execute(text("UPDATE ledger_entries SET body = CAST(replace(CAST(body AS TEXT), 'xxxx', 'yyyy') AS BLOB) WHERE seq = 5"))
    engine.dispose()
    out = tmp_path / "backup.ogb"
    create(sqlite_settings, out)
    found = verify_backup(sqlite_settings, out)
    assert not found.report.ok and found.report.failure.seq == 5


@pytest.mark.postgres
def test_postgres_backup_with_pg_dump_verifies_in_a_scratch_database_and_restores(tmp_path):
    server = "postgresql+psycopg://postgres@127.0.0.1:5432"
    source, target = "opsgate_bk_" + uuid.uuid4().hex[:10], "opsgate_rs_" + uuid.uuid4().hex[:10]
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{source}"'))
        conn.execute(text(f'CREATE DATABASE "{target}"'))
    try:
        settings = gateway_settings(tmp_path, database_url=f"{server}/{source}")
        upgrade(settings.database_url)
        _fill_ledger(settings.database_url, 50)
        out = tmp_path / "pg.ogb"
        create(settings, out)
        assert out.read_bytes().startswith(MAGIC + b"P")
        found = verify_backup(settings, out)
        assert found.kind == "postgresql" and found.report.ok and found.report.entries == 50
        with admin.connect() as conn:
            assert not conn.execute(text("SELECT count(*) FROM pg_database WHERE datname LIKE 'opsgate_verify_%'")).scalar()
        restore(settings, out, f"{server}/{target}")
        engine = make_engine(f"{server}/{target}")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar() == 50
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{source}" WITH (FORCE)'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)'))
        admin.dispose()
