"""The tables and the migrations agree: each table is defined once, in its domain's ``models.py``,
Alembic's autogenerate finds no difference between those tables and a database migrated to the
heads (SQLite and PostgreSQL), and every timestamp column is a :class:`UTCDateTime` that hands back
timezone-aware UTC datetimes on both stores."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime, Engine, MetaData, insert, select
from sqlalchemy.exc import StatementError
from tests.stores import migrated_url

import opsgate
from opsgate.security.models import users
from opsgate.store.db import make_engine
from opsgate.store.types import UTCDateTime

SRC = Path(opsgate.__file__).parent


def all_tables() -> MetaData:
    """The shared metadata with every domain's ``models.py`` imported (as Alembic's env.py does)."""
    for module in pkgutil.walk_packages(opsgate.__path__, "opsgate."):
        if module.name.endswith(".models"):
            importlib.import_module(module.name)
    from opsgate.store.models import metadata

    return metadata


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_url(request.param, tmp_path, "schema") as url:
        eng = make_engine(url)
        yield eng
        eng.dispose()


def test_autogenerate_finds_no_difference_between_tables_and_migrations(engine: Engine) -> None:
    metadata = all_tables()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, metadata) == []


def test_each_table_is_defined_once_in_a_models_module() -> None:
    defined: dict[str, list[str]] = {}
    appended: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "append_column":
                appended.append(f"{path.relative_to(SRC)}:{node.lineno}")
            elif (isinstance(func, ast.Name) and func.id == "Table" and len(node.args) >= 2
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[1], ast.Name)
                  and node.args[1].id == "metadata"):
                defined.setdefault(node.args[0].value, []).append(str(path.relative_to(SRC)))
    assert appended == []
    assert {name: where for name, where in defined.items() if len(where) != 1} == {}
    assert {name: where[0] for name, where in defined.items() if not where[0].endswith("/models.py")} == {}
    assert set(defined) == set(all_tables().tables)
    assert defined["users"] == ["security/models.py"]


def test_every_timestamp_column_is_utc_datetime() -> None:
    timestamps = [c for t in all_tables().tables.values() for c in t.columns
                  if isinstance(c.type, DateTime | UTCDateTime)]
    names = {f"{c.table.name}.{c.name}" for c in timestamps}
    assert {"users.created_at", "ai_operation_log.created_at", "rollouts.stage_started_at"} <= names
    assert [f"{c.table.name}.{c.name}" for c in timestamps if not isinstance(c.type, UTCDateTime)] == []


def test_utc_datetime_reads_back_aware_utc(engine: Engine) -> None:
    written = datetime(2026, 12, 4, 19, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        conn.execute(insert(users).values(user_id="alice", role="user", created_at=written))
        read = conn.execute(select(users.c.created_at)).scalar_one()
        earlier = conn.execute(select(users.c.user_id).where(
            users.c.created_at < datetime(2026, 12, 4, 17, 30, 16, tzinfo=UTC))).scalars().all()
    assert read == written
    assert read.tzinfo is UTC
    assert read.isoformat() == "2026-12-04T17:30:15.123456+00:00"
    assert earlier == ["alice"]


def test_utc_datetime_refuses_a_naive_datetime(engine: Engine) -> None:
    with pytest.raises(StatementError, match="needs a timezone-aware datetime"), engine.begin() as conn:
        conn.execute(insert(users).values(user_id="bob", role="user", created_at=datetime(2026, 12, 4)))
    with engine.connect() as conn:
        assert conn.execute(select(users.c.user_id)).scalars().all() == []
