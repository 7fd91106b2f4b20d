"""Ledger fixtures: a migrated SQLite file or a throwaway PostgreSQL database per test.

The ``db_url`` fixture runs a test on both stores; the PostgreSQL half is marked ``postgres`` and
fails (never skips) when the server at 127.0.0.1:5432 is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from tests.stores import migrated_url

from opsgate.clock import ManualClock
from opsgate.ledger.writer import Ledger
from opsgate.store.db import make_engine

LEDGER_EPOCH = datetime(2026, 11, 30, 6, 1, 2, 123456, tzinfo=UTC)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    with migrated_url("sqlite", tmp_path, "ledger") as url:
        yield url


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    with migrated_url("postgres", tmp_path, "ledger") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(LEDGER_EPOCH)


@pytest.fixture
def ledger(engine: Engine, clock: ManualClock) -> Iterator[Ledger]:
    led = Ledger(engine, clock)
    led.start()
    yield led
    led.close()
