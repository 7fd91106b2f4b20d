"""``opsgate.store.db.begin_write``: a SQLite transaction that reads and then writes, while another
connection writes and commits, waits for the write lock and sees that commit instead of failing
with "database is locked" (the dashboard fixture's ``add_user`` beside a serving gateway failed so
in CI). A plain ``engine.begin()`` fails in the same sequence: the mechanism the helper avoids."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import OperationalError
from tests.stores import migrated_engine

from opsgate.clock import ManualClock
from opsgate.security.users import add_user, get_role
from opsgate.store.db import begin_write, make_engine, writing

HOLD_S = 0.3


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'writes.db'}")
    with begin_write(engine) as conn:
        conn.execute(text("CREATE TABLE probe (n INTEGER)"))
    yield engine
    engine.dispose()


def _commit_later(engine: Engine, statement: str) -> threading.Thread:
    """Another connection takes the write lock, runs ``statement`` and commits HOLD_S later."""
    holding = threading.Event()

    def run() -> None:
        with begin_write(engine) as conn:
            conn.execute(text(statement))
            holding.set()
            time.sleep(HOLD_S)

    thread = threading.Thread(target=run)
    thread.start()
    assert holding.wait(5)
    return thread


def _count_then_insert(conn: Connection) -> int:
    seen = conn.execute(text("SELECT count(*) FROM probe")).scalar_one()
    conn.execute(text("INSERT INTO probe VALUES (:n)"), {"n": seen})
    return int(seen)


def test_a_read_then_write_waits_for_the_other_writer_and_sees_its_commit(engine: Engine) -> None:
    other = _commit_later(engine, "INSERT INTO probe VALUES (100)")
    with begin_write(engine) as conn:
        seen = _count_then_insert(conn)
    other.join()
    assert seen == 1  # it read after the other commit
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT n FROM probe")).scalars()) == [1, 100]


def test_a_plain_begin_fails_in_the_same_sequence(engine: Engine) -> None:
    other = _commit_later(engine, "INSERT INTO probe VALUES (100)")
    with pytest.raises(OperationalError, match="database is locked"), engine.begin() as conn:
        _count_then_insert(conn)
    other.join()
    with engine.connect() as conn:
        assert list(conn.execute(text("SELECT n FROM probe")).scalars()) == [100]


def test_add_user_beside_a_committing_writer(tmp_path: Path) -> None:
    engine = migrated_engine(tmp_path)
    clock = ManualClock()
    other = _commit_later(engine, "INSERT INTO users (user_id, role, created_at) "
                                  "VALUES ('bo', 'user', '2026-01-05 14:00:00')")
    assert add_user(engine, clock, "ada", "admin") is True
    other.join()
    assert (get_role(engine, "ada"), get_role(engine, "bo")) == ("admin", "user")
    engine.dispose()


def test_the_begin_is_sent_on_the_dbapi_cursor_past_the_listeners(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, Any]] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, parameters, *_: sent.append((statement, parameters)))
    executed: list[str] = []
    real = Connection._execute_context
    monkeypatch.setattr(Connection, "_execute_context",
                        lambda self, *a, **k: executed.append(a[2]) or real(self, *a, **k))
    with begin_write(engine) as conn:
        conn.exec_driver_sql("INSERT INTO probe VALUES (1)")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO probe VALUES (2)")
    assert sent == [("BEGIN IMMEDIATE", ()), ("INSERT INTO probe VALUES (1)", ()),
                    ("BEGIN", ()), ("INSERT INTO probe VALUES (2)", ())]
    assert executed == ["INSERT INTO probe VALUES (1)", "INSERT INTO probe VALUES (2)"]


def test_a_begin_that_cannot_take_the_write_lock_raises_sqlalchemys_error(engine: Engine) -> None:
    other = _commit_later(engine, "INSERT INTO probe VALUES (100)")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA busy_timeout=0")
        conn.commit()
        with pytest.raises(OperationalError, match="database is locked") as raised:
            writing(conn).begin()
        assert not conn.in_transaction()
        other.join()
        with conn.begin():  # the connection is still usable once the lock is free
            conn.exec_driver_sql("INSERT INTO probe VALUES (1)")
    assert raised.value.statement == "BEGIN IMMEDIATE"
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT n FROM probe")).scalars()) == [1, 100]


def test_an_engine_that_logs_its_statements_logs_its_begin(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.echo = True
    with caplog.at_level("INFO", "sqlalchemy.engine"), begin_write(engine) as conn:
        conn.exec_driver_sql("INSERT INTO probe VALUES (1)")
    assert [m for m in caplog.messages if "probe" in m or "BEGIN IMMEDIATE" in m] == [
        "BEGIN IMMEDIATE", "INSERT INTO probe VALUES (1)"]
