"""Small helpers shared by the ledger tests: tamper as the tables' owner (:func:`execute`) or
through a second connection to the SQLite file (:func:`tamper`), and read the rows back
(:func:`ledger_rows`)."""

from __future__ import annotations

import sqlite3

from sqlalchemy import Engine, text

from opsgate.config import Settings

from opsgate.ledger.guards import drop_triggers


def execute(engine: Engine, sql: str, **params: object) -> None:
    """Tamper as the tables' owner would: drop the append-only triggers, then run ``sql`` in the
    same transaction (the guards are speed bumps; the owner can always remove them)."""
    with engine.begin() as conn:
        drop_triggers(conn)
        conn.execute(text(sql), params)


def ledger_rows(engine: Engine) -> list[tuple[int, bytes, bytes, bytes]]:
    """Every ledger row as ``(seq, prev_hash, entry_hash, body)`` in seq order."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT seq, prev_hash, entry_hash, body FROM ledger_entries ORDER BY seq")
        )
        return [(r[0], bytes(r[1]), bytes(r[2]), bytes(r[3])) for r in rows]


def tamper(settings: Settings, *statements: str) -> None:
    """Run ``statements`` on ``settings``' SQLite file through a second, plain ``sqlite3``
    connection (as anyone with file access can), after dropping the append-only triggers."""
    path = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        for statement in statements:
            conn.execute(statement)
    conn.close()
