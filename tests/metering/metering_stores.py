"""Store fixtures for the budget tests: a migrated SQLite file or a throwaway PostgreSQL database.

Import the fixtures into a test module (``from tests.metering.metering_stores import *``-style
imports are avoided: name them). PostgreSQL halves are marked ``postgres`` and fail, never skip,
when the server at 127.0.0.1:5432 is down.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from opsgate.store.db import make_engine, upgrade

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@contextmanager
def fresh_postgres(prefix: str) -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database URL on each store."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'budgets.db'}"
        upgrade(url)
        yield url
        return
    with fresh_postgres("budgets") as url:
        upgrade(url)
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Engine]:
    """An engine on :func:`store_url`."""
    engine = make_engine(store_url)
    yield engine
    engine.dispose()
