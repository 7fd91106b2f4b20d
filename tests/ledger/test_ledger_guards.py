"""Append-only guards: triggers on both stores, and the PostgreSQL owner/app role split."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from opsgate.clock import ManualClock
from opsgate.ledger.checkpoint import Signer, generate_signer_key
from opsgate.ledger.guards import GUARDED_TABLES, guard_postgres
from opsgate.ledger.service import create_checkpoint
from opsgate.ledger.writer import Ledger


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET body = body",
        "DELETE FROM ledger_entries WHERE seq = 0",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_checkpoints SET note = note",
    ],
)
def test_triggers_refuse_changes(
    engine: Engine, ledger: Ledger, clock: ManualClock, statement: str
) -> None:
    ledger.append_sync("intent", {"request_id": "r"})
    assert create_checkpoint(engine, Signer(generate_signer_key("o")), "o", clock) is not None
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar() == 1


@pytest.mark.postgres
def test_truncate_is_refused_on_postgres(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        for table in GUARDED_TABLES:
            with pytest.raises(DBAPIError, match="TRUNCATE on .* is refused"), engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {table}"))
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_app_role_may_only_insert_and_select(postgres_url: str) -> None:
    role = f"opsgate_app_{uuid.uuid4().hex[:8]}"
    owner = f"opsgate_owner_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE ROLE {role} LOGIN"))
            guard_postgres(conn, role, owner)
        app = create_engine(postgres_url.replace("postgres@", f"{role}@"))
        with app.begin() as conn:
            conn.execute(text("INSERT INTO ledger_entries VALUES (0, :p, :h, :b)"),
                         {"p": bytes(32), "h": b"\x01" * 32, "b": b"{}"})
            assert conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar() == 1
        for statement in ("DROP TRIGGER ledger_entries_no_update_delete ON ledger_entries",
                          "ALTER TABLE ledger_entries DISABLE TRIGGER USER",
                          "TRUNCATE ledger_entries", "DELETE FROM ledger_entries"):
            with pytest.raises(DBAPIError, match="must be owner|permission denied"), \
                    app.begin() as conn:
                conn.execute(text(statement))
        app.dispose()
        with admin.connect() as conn:
            owner_of = conn.execute(text(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'ledger_entries'")).scalar()
        assert owner_of == owner
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"REASSIGN OWNED BY {owner} TO postgres"))
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
            conn.execute(text(f"DROP ROLE {owner}"))
        admin.dispose()
