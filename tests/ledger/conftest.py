"""Ledger fixtures: a migrated SQLite file or a throwaway PostgreSQL database per test.

The ``db_url`` fixture runs a test on both stores; the PostgreSQL half is marked ``postgres`` and
fails (never skips) when the server at 127.0.0.1:5432 is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from tests.stores import migrated_url

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.anchors import DirectoryAnchor
from opsgate.ledger.scheduled import Checkpointer, signer_for, verify_configured
from opsgate.ledger.writer import Ledger
from opsgate.store.db import make_engine, upgrade

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


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``OPSGATE_*`` of a migrated, empty SQLite ledger file, its signing key file and an anchor
    directory in ``tmp_path`` (``ledger.db``, ``ledger.key``, ``anchors``), set in the environment."""
    env = {"OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
           "OPSGATE_LEDGER_SIGNING_KEY_FILE": str(tmp_path / "ledger.key"),
           "OPSGATE_LEDGER_ANCHOR_DIR": str(tmp_path / "anchors")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    upgrade(env["OPSGATE_DATABASE_URL"])
    return Settings()


@pytest.fixture
def anchored_settings(settings: Settings) -> Settings:
    """:func:`settings` with 8 intents, checkpoints signed at 4 and 8 entries and both anchored in
    the directory; it verifies."""
    engine = make_engine(settings.database_url)
    clock = ManualClock()
    checkpointer = Checkpointer(engine, signer_for(settings, create=True), settings.ledger_origin,
                                clock, [DirectoryAnchor(Path(settings.ledger_anchor_dir))])
    with Ledger(engine, clock) as ledger:
        for i in range(8):
            ledger.append_sync("intent", {"request_id": f"req-{i}", "user_id": "alice"})
            if i in (3, 7):
                asyncio.run(checkpointer.run_once(force=True))
    assert verify_configured(settings, engine).ok
    engine.dispose()
    return settings
