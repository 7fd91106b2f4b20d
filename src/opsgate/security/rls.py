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
On SQLite (one tenant, no policies) the scopes are plain transactions.

User-owned tables are the rows a user writes through the API or that are bound to their login:
``user_settings`` (opt-ins) and ``refresh_tokens``. Not user-owned: ``budgets`` (limits set by
admins, including ``*`` rows that apply to everyone -- an owner policy would let a user-scoped
transaction raise its own limit), ``ai_operation_log`` and the ledger (written by the gateway and
read across users by monitoring, metrics, reconciliation and operators; users have no endpoint
that reads them). Those are guarded by the API's roles and by :func:`deploy_rls`'s grants.

:func:`deploy_rls` is the whole deployment step (``opsgate db rls``): the non-owner role, its
grants on every table, then :func:`install_rls`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from opsgate.security.auth import Principal

USER_OWNED_TABLES: dict[str, str] = {
    "user_settings": "user_id",
    "refresh_tokens": "user_id",
}
APPEND_ONLY_TABLES = frozenset({"ledger_entries"})
"""Tables the app role may read and insert into but never update or delete (the hash chain)."""
READ_ONLY_TABLES = frozenset({"alembic_version"})
"""Tables the app role may only read (migrations run as the owner)."""
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


@dataclass(frozen=True)
class RlsDeployment:
    """What :func:`deploy_rls` did: ``role_created`` (False when it existed), ``forced`` (tables
    with RLS enabled, forced and with policies), ``grants`` (``{table: privileges}``)."""

    app_role: str
    role_created: bool
    forced: list[str]
    grants: dict[str, str]


def deploy_rls(conn: Connection, app_role: str) -> RlsDeployment:
    """Run as the tables' owner on PostgreSQL after ``opsgate db upgrade`` (rerun after each one:
    idempotent, and new tables need their grants). Creates ``app_role`` (``LOGIN NOSUPERUSER
    NOBYPASSRLS``, no password: set one or use your server's authentication) unless it exists,
    grants it DML on every table (read-only :data:`READ_ONLY_TABLES`, append-only
    :data:`APPEND_ONLY_TABLES`) and installs the policies (:func:`install_rls`).
    Raises ``ValueError`` when the role is the connecting one, a superuser, ``BYPASSRLS``, or owns
    a table -- RLS would not bind it -- or for a name that is not a plain lower-case identifier."""
    if not _ROLE_NAME.match(app_role):
        raise ValueError("the app role must be a lower-case identifier")
    if app_role == conn.execute(text("SELECT current_user")).scalar_one():
        raise ValueError(f"{app_role} is the role running this command (the owner); pick another")
    created = _ensure_role(conn, app_role)
    schema = _schema(conn)
    conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {app_role}"))
    grants = {t: _grant(conn, t, app_role) for t in _tables(conn)}
    return RlsDeployment(app_role, created, install_rls(conn, app_role), grants)


def _ensure_role(conn: Connection, role: str) -> bool:
    found = conn.execute(
        text("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).first()
    if found is None:
        conn.execute(text(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"))
        return True
    if found[0]:
        raise ValueError(f"{role} is a superuser or has BYPASSRLS: row-level security would not bind it")
    owned = conn.execute(
        text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tableowner = :r"), {"r": role}
    ).scalars().all()
    if owned:
        raise ValueError(f"{role} owns {len(owned)} table(s) ({', '.join(sorted(owned))}): owners bypass policies")
    return False


def _tables(conn: Connection) -> list[str]:
    names = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars()
    return sorted(n for n in names if _ROLE_NAME.match(n))


def _grant(conn: Connection, table: str, role: str) -> str:
    privileges = ("SELECT" if table in READ_ONLY_TABLES else "SELECT, INSERT" if table in APPEND_ONLY_TABLES
                  else "SELECT, INSERT, UPDATE, DELETE")
    conn.execute(text(f"REVOKE ALL ON {table} FROM {role}"))
    conn.execute(text(f"GRANT {privileges} ON {table} TO {role}"))
    return privileges


@contextmanager
def user_scope(engine: Engine, principal: Principal) -> Iterator[Connection]:
    """A transaction in which the policies see ``principal`` (its id and highest role)."""
    with _scoped(engine, principal.user_id, _role(principal)) as conn:
        yield conn


@contextmanager
def service_scope(engine: Engine) -> Iterator[Connection]:
    """A transaction for the gateway's own cross-user work (metering, metrics, jobs)."""
    with _scoped(engine, "", "service") as conn:
        yield conn


@contextmanager
def scope_in(conn: Connection, principal: Principal) -> Iterator[Connection]:
    """The policies see ``principal`` for the statements of the block, inside a transaction
    already open on ``conn`` -- the ledger writer's, for work that commits with its entry
    (``Ledger.append_sync(..., work=...)``). Leaving the block restores the scope the transaction
    had before (the writer runs several appends' work in one transaction, so the next one does not
    run as ``principal``); a database error leaves it to the failed transaction, whose settings end
    with it. Nothing to do on SQLite."""
    if conn.dialect.name != "postgresql":
        yield conn
        return
    before = conn.execute(text(
        "SELECT current_setting('opsgate.user_id', true), current_setting('opsgate.role', true)")).one()
    _set_scope(conn, principal.user_id, _role(principal))
    restore = True
    try:
        yield conn
    except DBAPIError:
        restore = False  # PostgreSQL runs no statement in a failed transaction
        raise
    finally:
        if restore:
            _set_scope(conn, before[0] or "", before[1] or "")


def _role(principal: Principal) -> str:
    return next((r for r in ("admin", "operator", "user") if r in principal.roles), "user")


@contextmanager
def _scoped(engine: Engine, user_id: str, role: str) -> Iterator[Connection]:
    # a plain BEGIN: the scopes' callers only read, or write first (store.db.begin_write)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            _set_scope(conn, user_id, role)
        yield conn


def _set_scope(conn: Connection, user_id: str, role: str) -> None:
    """``SET LOCAL`` both settings, as bound parameters (a user id is never spliced into SQL)."""
    conn.execute(
        text("SELECT set_config('opsgate.user_id', :uid, true), set_config('opsgate.role', :role, true)"),
        {"uid": user_id, "role": role},
    )
