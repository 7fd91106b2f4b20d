"""`opsgate db rls` on a fresh PostgreSQL database, then the gateway connected AS the app role:
opt-ins through ``PUT /v1/me/settings`` work under forced row-level security, another user cannot
read or change them even with crafted SQL on the gateway's own pooled connections, and a pooled
connection does not carry the previous user's id. SQLite is refused with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from tests.gateways import Gateway, gateway_settings, running_gateway

from opsgate.clock import SystemClock
from opsgate.security.auth import Principal
from opsgate.security.errors import Unauthorized
from opsgate.security.refresh import RefreshTokens
from opsgate.security.rls import service_scope, user_scope

pytestmark = pytest.mark.postgres
SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
OP = "task-prioritize"
ALICE, BOB = Principal("alice", ("user",)), Principal("bob", ("user",))


def opsgate(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``opsgate`` command line in a child process."""
    env = {**os.environ, "OPSGATE_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "opsgate.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """A fresh database (owned by ``postgres``) and a fresh app role name; both dropped after."""
    name, role = "opsgate_rlsd_" + uuid.uuid4().hex[:10], "opsgate_app_" + uuid.uuid4().hex[:10]
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{SERVER}/{name}", role
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


@pytest.fixture
def app_gateway(database: tuple[str, str], tmp_path: Path) -> Iterator[Gateway]:
    """Migrate as the owner, run ``opsgate db rls``, then serve the gateway as the app role."""
    owner_url, role = database
    assert opsgate("db", "upgrade", database_url=owner_url).returncode == 0
    done = opsgate("db", "rls", "--app-role", role, "--admin-url", owner_url, database_url="sqlite:///unused.db")
    assert done.returncode == 0, done.stderr
    assert f"app role {role}: created" in done.stdout
    assert "granted SELECT, INSERT on ledger_entries" in done.stdout
    assert "policies installed: refresh_tokens, user_settings" in done.stdout
    app_url = owner_url.replace("postgres@", f"{role}@", 1)
    settings = gateway_settings(tmp_path, database_url=app_url, auto_migrate=False)
    with running_gateway(settings) as running:
        yield running


def _me(gateway: Gateway, who: Principal) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token(who.user_id)}"}


def _pooled_with_pid(engine: Engine, pid: int) -> bool:
    """Check out pooled connections until the one with backend ``pid`` turns up; on it, outside any
    scope, assert no user id is set and no opt-in is visible. False when the pid was not pooled."""
    held = []
    try:
        for _ in range(engine.pool.size() + 1):
            conn = engine.connect()
            held.append(conn)
            if conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid:
                assert conn.execute(text("SELECT current_setting('opsgate.user_id', true)")).scalar() in ("", None)
                assert conn.execute(text("SELECT count(*) FROM user_settings")).scalar() == 0
                return True
        return False
    finally:
        for conn in held:
            conn.close()


def test_the_gateway_runs_as_the_app_role_and_users_are_isolated(app_gateway: Gateway) -> None:
    gw, engine = app_gateway, app_gateway.runtime.engine
    with engine.connect() as conn:
        who = conn.execute(text("SELECT current_user, rolbypassrls OR rolsuper FROM pg_roles "
                                "WHERE rolname = current_user")).one()
    assert who[0].startswith("opsgate_app_") and who[1] is False

    r = gw.client.put("/v1/me/settings", headers=_me(gw, ALICE), json={"opt_in": {OP: True}})
    assert r.status_code == 200, r.text
    assert gw.client.get("/v1/me/settings", headers=_me(gw, ALICE)).json()["opt_in"][OP] is True
    assert gw.client.get("/v1/me/settings", headers=_me(gw, BOB)).json()["opt_in"][OP] is False
    assert gw.client.put("/v1/me/settings", headers=_me(gw, BOB), json={"opt_in": {OP: False}}).status_code == 200

    with user_scope(engine, BOB) as conn:  # crafted SQL on the gateway's own pool, as bob
        crafted = text("SELECT user_id, opted_in FROM user_settings WHERE user_id = 'alice' OR 1=1")
        assert conn.execute(crafted).all() == [("bob", False)]
        assert conn.execute(text("UPDATE user_settings SET opted_in = false WHERE user_id = 'alice'")).rowcount == 0
        assert conn.execute(text("DELETE FROM user_settings WHERE user_id = 'alice'")).rowcount == 0
    with pytest.raises(DBAPIError, match="row-level security"), user_scope(engine, BOB) as conn:
        conn.execute(text("INSERT INTO user_settings VALUES ('alice', 'email-compose', true, now())"))
    assert gw.client.get("/v1/me/settings", headers=_me(gw, ALICE)).json()["opt_in"][OP] is True
    with service_scope(engine) as conn:
        rows = conn.execute(text("SELECT user_id, operation, opted_in FROM user_settings ORDER BY 1")).all()
    assert rows == [("alice", OP, True), ("bob", OP, False)]

    with user_scope(engine, ALICE) as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert conn.execute(text("SELECT count(*) FROM user_settings")).scalar() == 1
    assert _pooled_with_pid(engine, pid)


def test_refresh_tokens_rotate_under_forced_rls_and_stay_private(app_gateway: Gateway) -> None:
    engine = app_gateway.runtime.engine
    tokens = RefreshTokens(engine, SystemClock(), ttl_s=3600, grace_s=0, successor_key=b"k" * 32)
    first = tokens.issue("alice")
    second = tokens.rotate(first.token)
    assert (second.user_id, second.family_id) == ("alice", first.family_id) and tokens.family_active(first.family_id)
    with user_scope(engine, BOB) as conn:
        assert conn.execute(text("SELECT count(*) FROM refresh_tokens")).scalar() == 0
        assert conn.execute(text("UPDATE refresh_tokens SET revoked_at = now()")).rowcount == 0
    with user_scope(engine, ALICE) as conn:
        assert conn.execute(text("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL")).scalar() == 2
    with pytest.raises(Unauthorized):
        tokens.rotate(first.token)  # reuse after the grace window revokes the family
    assert tokens.family_active(first.family_id) is False


def test_the_command_refuses_sqlite_and_a_superuser_role(database: tuple[str, str], tmp_path: Path) -> None:
    refused = opsgate("db", "rls", "--app-role", "opsgate_app", database_url=f"sqlite:///{tmp_path / 'o.db'}")
    assert refused.returncode == 2 and "row-level security needs PostgreSQL" in refused.stderr
    owner_url, _ = database
    assert opsgate("db", "upgrade", database_url=owner_url).returncode == 0
    bypass = opsgate("db", "rls", "--app-role", "postgres", database_url=owner_url)
    assert bypass.returncode == 2 and "is the role running this command" in bypass.stderr
