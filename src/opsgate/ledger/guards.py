"""Append-only guards on the ledger tables (speed bumps, not proofs; see docs/ledger.md).

SQLite: ``BEFORE UPDATE`` / ``BEFORE DELETE`` triggers that ``RAISE(ABORT)`` (SQLite has no
TRUNCATE; a ``DELETE`` without ``WHERE`` fires the delete trigger). PostgreSQL: a row trigger
rejecting UPDATE and DELETE and a statement trigger rejecting TRUNCATE, both raising SQLSTATE
42501; plus :func:`guard_postgres`, which hands the tables to a separate owner role and leaves the
application role INSERT and SELECT only. Whoever owns the tables (or is superuser) can still drop
the triggers: that is what signed, externally anchored checkpoints are for.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, text

GUARDED_TABLES = (
    "ledger_entries",
    "ledger_checkpoints",
    "ledger_anchor_records",
    "ledger_recoveries",
)
OWNER_ROLE = "opsgate_ledger_owner"
PG_FUNCTION = "opsgate_ledger_append_only"
_ROLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


def install_triggers(conn: Connection) -> None:
    """Create the append-only triggers on every guarded table for ``conn``'s dialect."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(_PG_FUNCTION_SQL))
    for table in GUARDED_TABLES:
        for statement in _trigger_sql(conn.dialect.name, table):
            conn.execute(text(statement))


def drop_triggers(conn: Connection) -> None:
    """Remove what :func:`install_triggers` created (the migration's downgrade)."""
    postgres = conn.dialect.name == "postgresql"
    for table in GUARDED_TABLES:
        for name in _trigger_names(conn.dialect.name, table):
            conn.execute(
                text(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgres else ""))
            )
    if postgres:
        conn.execute(text(f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()"))


def guard_postgres(conn: Connection, app_role: str, owner_role: str = OWNER_ROLE) -> list[str]:
    """Make ``owner_role`` (created NOLOGIN if missing) own the guarded tables and leave
    ``app_role`` SELECT and INSERT only (the anchor state table keeps UPDATE for its
    compare-and-swap). Run as a superuser or the tables' current owner. Returns the statements run."""
    for role in (app_role, owner_role):
        if not _ROLE_RE.match(role):
            raise ValueError(f"role name {role!r} is not a plain lower-case identifier")
    statements = [
        (
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{owner_role}') "
            f"THEN CREATE ROLE {owner_role} NOLOGIN; END IF; END $$"
        ),
        f"ALTER FUNCTION {PG_FUNCTION}() OWNER TO {owner_role}",
    ]
    for table in (*GUARDED_TABLES, "ledger_anchor_state"):
        statements += [
            f"ALTER TABLE {table} OWNER TO {owner_role}",
            f"REVOKE ALL ON {table} FROM {app_role}",
            f"REVOKE ALL ON {table} FROM PUBLIC",
            f"GRANT SELECT, INSERT ON {table} TO {app_role}",
        ]
    statements.append(f"GRANT UPDATE (anchored_size) ON ledger_anchor_state TO {app_role}")
    for statement in statements:
        conn.execute(text(statement))
    return statements


_PG_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: the ledger is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = '42501';
END
$$
"""


def _trigger_names(dialect: str, table: str) -> list[str]:
    if dialect == "postgresql":
        return [f"{table}_no_update_delete", f"{table}_no_truncate"]
    return [f"{table}_no_update", f"{table}_no_delete"]


def _trigger_sql(dialect: str, table: str) -> list[str]:
    if dialect == "postgresql":
        row, statement = _trigger_names(dialect, table)
        return [
            (
                f"CREATE TRIGGER {row} BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {PG_FUNCTION}()"
            ),
            (
                f"CREATE TRIGGER {statement} BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_FUNCTION}()"
            ),
        ]
    return [
        f"CREATE TRIGGER {name} BEFORE {op} ON {table} BEGIN "
        f"SELECT RAISE(ABORT, '{op} on {table} is refused: the ledger is append-only'); END"
        for name, op in zip(_trigger_names(dialect, table), ("UPDATE", "DELETE"), strict=True)
    ]
