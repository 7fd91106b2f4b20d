"""PostgreSQL row-level security: every query on a user-owned table is scoped to the principal.

:func:`install_rls` (run by the table owner, e.g. at deployment after ``opsgate db upgrade``)
grants the application role DML on the user-owned tables and, for each, runs
``ENABLE ROW LEVEL SECURITY`` and ``FORCE ROW LEVEL SECURITY`` (so not even the owner bypasses it)
and creates policies for the application role (PostgreSQL docs, "Row Security Policies"):

``opsgate_owner``       ALL: ``<owner column> = NULLIF(current_setting('opsgate.user_id', true), '')``
``opsgate_staff_read``  SELECT: ``current_setting('opsgate.role', true) IN ('operator', 'admin', 'service')``
``opsgate_staff_write`` ALL: ``current_setting('opsgate.role', true) IN ('admin', 'service')``

When the settings are unset (a new connection, or after the transaction that set them ended,
when PostgreSQL resets a custom setting to ``''``), every comparison is NULL or false: the
policies fail closed and the app role sees and changes nothing.

The application connects as a non-owner role (no ``BYPASSRLS``) and runs each unit of work in
:func:`user_scope`, which sets both values with ``set_config(name, value, true)`` -- the
parameterised form of ``SET LOCAL``, so a user id is never spliced into SQL -- inside the
transaction; they end with it, so a pooled connection never carries the previous user's id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

from opsgate.security.auth import Principal

USER_OWNED_TABLES: dict[str, str] = {
    "ai_operation_log": "user_id",
    "user_settings": "user_id",
    "budgets": "user_id",
    "refresh_tokens": "user_id",
}
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CURRENT_USER = "NULLIF(current_setting('opsgate.user_id', true), '')"
_CURRENT_ROLE = "current_setting('opsgate.role', true)"


def install_rls(conn: Connection, app_role: str, tables: dict[str, str] | None = None) -> list[str]:
    """Enable, force and define the policies above on ``tables`` (``{table: owner column}``,
    default :data:`USER_OWNED_TABLES` that exist) for ``app_role``; returns the tables covered.
    Idempotent. Raises ``ValueError`` for a role name that is not a plain lower-case identifier."""
    if not _ROLE_NAME.match(app_role):
        raise ValueError("the app role must be a lower-case identifier")
    present = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())
    chosen = {t: c for t, c in (tables or USER_OWNED_TABLES).items() if t in present}
    for table, column in chosen.items():
        for statement in _statements(table, column, app_role):
            conn.execute(text(statement))
    conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {_schema(conn)} TO {app_role}"))
    return sorted(chosen)


def _statements(table: str, column: str, role: str) -> list[str]:
    return [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}",
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS opsgate_owner ON {table}",
        f"DROP POLICY IF EXISTS opsgate_staff_read ON {table}",
        f"DROP POLICY IF EXISTS opsgate_staff_write ON {table}",
        f"CREATE POLICY opsgate_owner ON {table} FOR ALL TO {role} "
        f"USING ({column} = {_CURRENT_USER}) WITH CHECK ({column} = {_CURRENT_USER})",
        f"CREATE POLICY opsgate_staff_read ON {table} FOR SELECT TO {role} "
        f"USING ({_CURRENT_ROLE} IN ('operator', 'admin', 'service'))",
        f"CREATE POLICY opsgate_staff_write ON {table} FOR ALL TO {role} "
        f"USING ({_CURRENT_ROLE} IN ('admin', 'service')) WITH CHECK ({_CURRENT_ROLE} IN ('admin', 'service'))",
    ]


def _schema(conn: Connection) -> str:
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    if not _ROLE_NAME.match(schema):
        raise ValueError("unexpected schema name")
    return schema


@contextmanager
def user_scope(engine: Engine, principal: Principal) -> Iterator[Connection]:
    """A transaction in which the policies see ``principal`` (its id and highest role)."""
    role = next((r for r in ("admin", "operator", "user") if r in principal.roles), "user")
    with _scoped(engine, principal.user_id, role) as conn:
        yield conn


@contextmanager
def service_scope(engine: Engine) -> Iterator[Connection]:
    """A transaction for the gateway's own cross-user work (metering, metrics, jobs)."""
    with _scoped(engine, "", "service") as conn:
        yield conn


@contextmanager
def _scoped(engine: Engine, user_id: str, role: str) -> Iterator[Connection]:
    with engine.begin() as conn:
        conn.execute(
            text("SELECT set_config('opsgate.user_id', :uid, true), set_config('opsgate.role', :role, true)"),
            {"uid": user_id, "role": role},
        )
        yield conn
