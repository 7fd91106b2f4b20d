"""A PostgreSQL restart closes the ledger writer's long-held connection. The next append must not
fail for it, however long after the restart it comes: the closed connection shows on the batch's
first statement (the append lock), before anything is written, and is replaced once. Found by
``bench/chaos.py``: each replica's first ledger write after a restart answered 503."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from opsgate.clock import ManualClock
from opsgate.ledger.writer import Ledger
from opsgate.store.db import make_engine


@pytest.mark.postgres
def test_an_append_after_the_server_closed_the_writers_connection_succeeds(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with Ledger(engine, ManualClock()) as ledger:
        first = ledger.append_sync("intent", {"request_id": "before"})
        with admin.connect() as conn:  # what a restart does to every session: pg_terminate_backend
            terminated = conn.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()").scalar()
        second = ledger.append_sync("intent", {"request_id": "after"}, timeout=30)
    assert terminated >= 1
    assert (first.seq, second.seq) == (0, 1)
    assert (ledger.transactions, ledger.entries) == (2, 2)
    admin.dispose()
    engine.dispose()
