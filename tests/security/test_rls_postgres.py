"""Row-level security on PostgreSQL, as the non-owner app role: user A cannot read, change or
delete user B's rows even with crafted SQL; an unscoped or pooled connection sees nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from opsgate.security.auth import Principal
from opsgate.security.rls import install_rls, scope_in, service_scope, user_scope
from opsgate.store.db import upgrade
from opsgate.store.models import ai_operation_log

pytestmark = pytest.mark.postgres
SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
ALICE, BOB = Principal("alice", ("user",)), Principal("bob", ("user",))


@pytest.fixture
def app_engine():
    name, role = "opsgate_rls_" + uuid.uuid4().hex[:10], "opsgate_app_" + uuid.uuid4().hex[:10]
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))
    owner = create_engine(f"{SERVER}/{name}")
    try:
        upgrade(f"{SERVER}/{name}")
        with owner.begin() as conn:
            assert install_rls(conn, role) == ["refresh_tokens", "user_settings"]  # USER_OWNED_TABLES
            # the policy mechanics, on a table with many rows per user (not user-owned in deployment)
            assert install_rls(conn, role, {"ai_operation_log": "user_id"}) == ["ai_operation_log"]
        engine = create_engine(f"postgresql+psycopg://{role}@127.0.0.1:5432/{name}", pool_size=1, max_overflow=0)
        yield engine
        engine.dispose()
    finally:
        owner.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def _row(user_id: str, n: int) -> dict:
    return {"request_id": f"{user_id}-{n}", "user_id": user_id, "operation": "email-compose",
            "status": "ok", "latency_ms": 1.0, "created_at": datetime.now(UTC)}


def _seed(engine) -> None:
    for who in (ALICE, BOB):
        with user_scope(engine, who) as conn:
            conn.execute(insert(ai_operation_log), [_row(who.user_id, 1), _row(who.user_id, 2)])


def _ids(conn, query=None) -> list[str]:
    return sorted(conn.execute(query if query is not None else select(ai_operation_log.c.request_id)).scalars())


def test_each_user_reads_only_their_rows_even_with_crafted_sql(app_engine):
    _seed(app_engine)
    with user_scope(app_engine, ALICE) as conn:
        assert _ids(conn) == ["alice-1", "alice-2"]
        crafted = text("SELECT request_id FROM ai_operation_log WHERE user_id = 'bob' OR 1=1 ORDER BY 1")
        assert list(conn.execute(crafted).scalars()) == ["alice-1", "alice-2"]
        assert conn.execute(text("SELECT count(*) FROM ai_operation_log WHERE user_id = 'bob'")).scalar() == 0


def test_a_user_cannot_update_or_delete_another_users_rows(app_engine):
    _seed(app_engine)
    with user_scope(app_engine, ALICE) as conn:
        assert conn.execute(update(ai_operation_log).where(ai_operation_log.c.user_id == "bob").values(status="x")).rowcount == 0
        assert conn.execute(delete(ai_operation_log).where(ai_operation_log.c.user_id == "bob")).rowcount == 0
        assert conn.execute(text("DELETE FROM ai_operation_log")).rowcount == 2  # only her own
    with pytest.raises(DBAPIError, match="row-level security"):
        with user_scope(app_engine, ALICE) as conn:
            conn.execute(insert(ai_operation_log).values(_row("bob", 3)))
    with pytest.raises(DBAPIError, match="row-level security"):
        with user_scope(app_engine, BOB) as conn:
            conn.execute(update(ai_operation_log).values(user_id="alice"))
    with service_scope(app_engine) as conn:
        assert _ids(conn) == ["bob-1", "bob-2"]


def test_the_app_role_cannot_switch_the_policies_off(app_engine):
    with pytest.raises(DBAPIError):
        with app_engine.begin() as conn:
            conn.execute(text("ALTER TABLE ai_operation_log DISABLE ROW LEVEL SECURITY"))
    with pytest.raises(DBAPIError):
        with app_engine.begin() as conn:
            conn.execute(text("SET ROLE postgres"))


def test_unset_scope_fails_closed_and_a_pooled_connection_forgets_the_user(app_engine):
    _seed(app_engine)
    with app_engine.begin() as conn:
        assert _ids(conn) == []
        assert conn.execute(delete(ai_operation_log)).rowcount == 0
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    with user_scope(app_engine, BOB) as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid  # the same pooled connection
        assert _ids(conn) == ["bob-1", "bob-2"]
    with app_engine.begin() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid
        assert conn.execute(text("SELECT current_setting('opsgate.user_id', true)")).scalar() == ""
        assert _ids(conn) == []


def test_an_injected_user_id_is_a_value_not_sql(app_engine):
    _seed(app_engine)
    with user_scope(app_engine, Principal("x' OR '1'='1", ("user",))) as conn:
        assert _ids(conn) == []


def test_a_scope_inside_an_open_transaction_covers_its_block_only(app_engine):
    """:func:`scope_in` is how work in the ledger writer's transaction (which may run several
    appends' work) writes a user's rows: the policies see the user inside the block, and the
    transaction's previous scope (here: none, failing closed) again after it."""
    _seed(app_engine)
    with service_scope(app_engine) as conn:
        with scope_in(conn, ALICE):
            assert _ids(conn) == ["alice-1", "alice-2"]
            conn.execute(insert(ai_operation_log).values(_row("alice", 3)))
            with pytest.raises(DBAPIError, match="row-level security"), conn.begin_nested():
                conn.execute(insert(ai_operation_log).values(_row("bob", 3)))
        assert _ids(conn) == ["alice-1", "alice-2", "alice-3", "bob-1", "bob-2"]  # the service scope again
    with app_engine.begin() as conn:
        with scope_in(conn, BOB):
            assert _ids(conn) == ["bob-1", "bob-2"]
        assert _ids(conn) == []  # unset again: fails closed
        assert conn.execute(text("SELECT current_setting('opsgate.user_id', true)")).scalar() == ""
