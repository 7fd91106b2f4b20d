"""A PostgreSQL restart ends the leader's session and with it the advisory lock. The old leader
must notice (its next tick) and contend again, instead of leading beside the standby that took
the freed lock. Found with ``bench/chaos.py`` (a PostgreSQL restart under two workers)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from opsgate.monitoring.worker import Leadership
from opsgate.store.db import make_engine
from tests.stores import fresh_postgres

@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres("leader") as url:
        yield url


@pytest.mark.postgres
def test_a_leader_whose_session_the_server_ended_contends_again(pg_url: str, tmp_path: Path) -> None:
    leader_engine, standby_engine = make_engine(pg_url), make_engine(pg_url)
    leader = Leadership(leader_engine, tmp_path / "unused.lock")
    standby = Leadership(standby_engine, tmp_path / "unused.lock")
    assert (leader.try_acquire(), standby.try_acquire()) == (True, False)
    assert leader._conn is not None
    pid = leader._conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # what a restart does to the leader's session
        assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar() is True
    deadline = time.monotonic() + 30  # the ended backend releases its lock as it exits
    while not standby.try_acquire() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert standby.held  # the lock is free: the standby takes it
    assert leader.try_acquire() is False  # the old leader noticed and is a standby now
    assert (leader.held, standby.held) == (False, True)
    standby.release()
    assert leader.try_acquire() is True
    leader.release()
    for engine in (admin, leader_engine, standby_engine):
        engine.dispose()
