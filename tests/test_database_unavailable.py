"""A database that stops answering (a restart, a failover) reads as 503 ``database_unavailable``
with ``Retry-After``, on every route, never as a 500 ``internal_error``. Found by
``bench/chaos.py``: during a PostgreSQL restart some calls answered 500 (an ``OperationalError``
from a step that reads the database fell through to the catch-all)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from tests.gateways import gateway_settings, running_gateway

from opsgate.store.db import upgrade

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"dbdown_{uuid.uuid4().hex[:16]}"
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        upgrade(f"{PG_SERVER}/{name}")
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.mark.postgres
def test_a_database_that_stops_answering_is_503_database_unavailable(pg_url: str, tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, database_url=pg_url)
    with running_gateway(settings) as gateway:
        client = gateway.client
        headers = {"Authorization": f"Bearer {gateway.token('oncall', 'admin')}"}
        assert client.get("/v1/incidents", headers=headers).status_code == 200
        name = pg_url.rsplit("/", 1)[1]
        admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # the database stops answering: no session, no new one
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 f"WHERE datname = '{name}'")
        admin.dispose()
        down = client.get("/v1/incidents", headers=headers)
    assert (down.status_code, down.json()["code"], down.headers["Retry-After"]) == (503, "database_unavailable", "1")
    assert "postgres" not in down.text and "127.0.0.1" not in down.text
