"""Store fixtures for the budget tests: a migrated SQLite file or a throwaway PostgreSQL database.

Import the fixtures into a test module (``from tests.metering.metering_stores import *``-style
imports are avoided: name them). PostgreSQL halves are marked ``postgres`` and fail, never skip,
when the server at 127.0.0.1:5432 is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from opsgate.store.db import make_engine
from tests.stores import migrated_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database URL on each store."""
    with migrated_url(request.param, tmp_path, "budgets") as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Engine]:
    """An engine on :func:`store_url`."""
    engine = make_engine(store_url)
    yield engine
    engine.dispose()
