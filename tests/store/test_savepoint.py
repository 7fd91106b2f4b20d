"""``opsgate.store.db.savepoint``, the request path's ``begin_nested``: what a block wrote stays
when it ends, and is undone when it called ``rollback()`` or raised, while the enclosing
transaction and what it wrote before go on, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from tests.stores import fresh_postgres

from opsgate.store.db import make_engine, savepoint


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        yield from _with_probe(f"sqlite:///{tmp_path / 'savepoint.db'}")
    else:
        with fresh_postgres("savepoint") as url:
            yield from _with_probe(url)


def _with_probe(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE savepoint_probe (n INTEGER)"))
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT n FROM savepoint_probe ORDER BY n")).scalars())


def _insert(conn: object, n: int) -> None:
    conn.execute(text("INSERT INTO savepoint_probe VALUES (:n)"), {"n": n})  # type: ignore[attr-defined]


def test_a_block_keeps_its_writes_unless_it_rolls_back_or_raises(engine: Engine) -> None:
    with engine.begin() as conn:
        _insert(conn, 1)
        with savepoint(conn):
            _insert(conn, 2)
        with savepoint(conn) as point:
            _insert(conn, 3)
            point.rollback()
        with pytest.raises(ZeroDivisionError), savepoint(conn):
            _insert(conn, 4)
            1 / 0  # noqa: B018
        with savepoint(conn):
            _insert(conn, 5)
            with savepoint(conn) as inner:
                _insert(conn, 6)
                inner.rollback()
        _insert(conn, 7)
    assert _rows(engine) == [1, 2, 5, 7]


def test_a_failed_statement_is_undone_and_the_transaction_goes_on(engine: Engine) -> None:
    """On PostgreSQL an error aborts the transaction; rolling back to the savepoint recovers it."""
    with engine.begin() as conn:
        _insert(conn, 1)
        with pytest.raises(Exception, match="(?i)no such table|does not exist"), savepoint(conn):
            _insert(conn, 2)
            conn.execute(text("SELECT * FROM no_such_table"))
        _insert(conn, 3)
    assert _rows(engine) == [1, 3]
