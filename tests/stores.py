"""The two stores for tests: a throwaway PostgreSQL database on the server at 127.0.0.1:5432, a
migrated database URL on either store, and an engine on a migrated SQLite file. PostgreSQL halves
are marked ``postgres`` and fail, never skip, when the server is down."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def migrated_engine(tmp_path: Path, name: str = "opsgate.db") -> Engine:
    """An engine on a fresh SQLite file ``tmp_path / name`` at every migration head."""
    url = f"sqlite:///{tmp_path / name}"
    upgrade(url)
    return make_engine(url)


@contextmanager
def migrated_url(store: str, tmp_path: Path, prefix: str) -> Iterator[str]:
    """A database URL at the head of every migration: ``store`` is ``"sqlite"`` (a file named
    ``{prefix}.db`` in ``tmp_path``) or ``"postgres"`` (a fresh database, dropped afterwards)."""
    if store == "sqlite":
        url = f"sqlite:///{tmp_path / f'{prefix}.db'}"
        upgrade(url)
        yield url
        return
    with fresh_postgres(prefix) as url:
        upgrade(url)
        yield url
