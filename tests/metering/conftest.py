"""Metering fixtures: ``store_url``, a migrated database URL on each store (SQLite, and PostgreSQL
marked ``postgres``: a failure, never a skip, when the server at 127.0.0.1:5432 is down), and
``store``, an engine on it."""

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
