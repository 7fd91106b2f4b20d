"""``opsgate.store.statements`` (issue 21): the ledger writer's statements sent on the DB-API
cursor send the SQL and parameters SQLAlchemy's ``conn.execute`` sends, read the same rows, report
the same rowcounts, and raise the same errors, on SQLite and PostgreSQL.

Each comparison runs a statement both ways in a transaction of its own, rolled back, on the same
database: SQLAlchemy's ``conn.execute`` and the fast path. What was sent is recorded by a
``before_cursor_execute`` listener (both paths call the engine's listeners); what it changed is
read back in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.exc import IntegrityError
from tests.stores import migrated_url

from opsgate.errors import InvalidInput
from opsgate.ledger import writer
from opsgate.metering import budgets as budgets_module
from opsgate.metering import reservations as r
from opsgate.metering.models import OPEN, budget_counters, budget_reservations, budgets
from opsgate.store import statements
from opsgate.store.db import make_engine
from opsgate.store.models import ledger_entries
from opsgate.store.statements import fetch, run

NOW = datetime(2026, 12, 5, 15, 20, 1, 123456, tzinfo=UTC)
DAY = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
LIMIT = 1000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database with four budgets (limit 1000 micro-USD a day), their counters (2:
    900 reserved, no room for 60; 4: overspent), two calls' open reservations (r1 on 1-3, r2 on
    1-4) and two ledger entries."""
    with migrated_url(str(request.param), tmp_path, "statements") as url:
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(insert(budgets), [
                {"id": n, "user_id": user, "operation": op, "period": "day", "limit_micro_usd": LIMIT,
                 "updated_at": NOW}
                for n, user, op in ((1, "*", "*"), (2, "alice", "*"), (3, "*", "email-compose"),
                                    (4, "bob", "*"))])
            conn.execute(insert(budget_counters), [
                {"budget_id": n, "period_start": DAY, "spent_micro_usd": 50 * n if n < 4 else LIMIT + 1,
                 "reserved_micro_usd": {2: 900, 4: 0}.get(n, 10)} for n in (1, 2, 3, 4)])
            conn.execute(insert(budget_reservations), [
                {"request_id": rid, "budget_id": n, "period_start": DAY, "worst_micro_usd": 7 * n,
                 "state": OPEN, "created_at": NOW, "expires_at": NOW + timedelta(seconds=60)}
                for rid, ids in (("r1", (1, 2, 3)), ("r2", (1, 2, 3, 4))) for n in ids])
            conn.execute(insert(ledger_entries), [
                {"seq": n, "prev_hash": bytes([n]) * 32, "entry_hash": bytes([n + 1]) * 32,
                 "body": b'{"ts":"x\\u00e9"}' * n} for n in (1, 2)])
        try:
            yield engine
        finally:
            engine.dispose()


def _sent(engine: Engine, call: Callable[[Any], Any]) -> tuple[Any, list[tuple[str, Any, bool]], list[Any]]:
    """``call(conn)``'s result, the (SQL, parameters, executemany) it sent and the budget tables'
    rows after it, in a transaction rolled back afterwards."""
    sent: list[tuple[str, Any, bool]] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, many: bool) -> None:
        sent.append((sql, params, many))

    with engine.connect() as conn, conn.begin() as transaction:
        event.listen(engine, "before_cursor_execute", record)
        try:
            result = call(conn)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        after = [conn.execute(select(t).order_by(*t.primary_key)).all()
                 for t in (budget_counters, budget_reservations)]
        transaction.rollback()
    return result, sent, after


def _rows(rows: list[Any]) -> list[tuple[tuple[str, ...], list[tuple[type, Any]]]]:
    """Each row's column keys and its values with their types."""
    return [(tuple(row._fields), [(type(v), v) for v in row]) for row in rows]


SETTLE = {"rid": "r1", "new_state": "settled", "amount": 40, "now": NOW}
HOLDS = [{"b": n, "p": DAY, "amount": 60} for n in (1, 2, 3)]  # budget 2 has no room for 60
FETCHES = [  # (statement, parameters): the writer's reads and UPDATE ... RETURNING
    (writer._HEAD, {}),
    (budgets_module._APPLICABLE, {"user_id": "alice", "operation": "email-compose"}),
    (r._SETTLE_OPEN, SETTLE),
    (r._OVER, {"rid": "r2"}),
]
RUNS = [  # (statement, parameters): the writer's writes, one set or an executemany
    (r._HOLD, HOLDS),
    (r._HOLD, HOLDS[0]),
    (r._HOLD, HOLDS[1]),
    (r._APPLY, [{"b": n, "p": DAY, "released": 5, "spent_delta": 30 * n} for n in (1, 2, 3)]),
    (r._MARK_OPEN, [{"rid": "r1", "b": n, "new_state": "unknown_usage", "amount": 9, "now": NOW}
                    for n in (1, 3)]),
    (budget_reservations.insert(), [{"request_id": "r3", "budget_id": 1, "period_start": DAY,
                                     "worst_micro_usd": 1, "state": OPEN, "created_at": NOW,
                                     "expires_at": NOW}]),
]


@pytest.mark.parametrize(("statement", "params"), FETCHES)
def test_fetch_sends_what_sqlalchemy_sends_and_reads_the_same_rows(
    engine: Engine, statement: Any, params: dict[str, Any]
) -> None:
    old_rows, old_sent, old_after = _sent(engine, lambda conn: conn.execute(statement, params).all())
    new_rows, new_sent, new_after = _sent(engine, lambda conn: fetch(conn, statement, params))
    assert statements._plan(engine.dialect, statement, tuple(params), False) is not None  # the fast path
    assert new_sent == old_sent and len(new_sent) == 1
    assert _rows(new_rows) == _rows(old_rows) and new_rows
    assert new_after == old_after


def test_fetch_reads_processed_values(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        settled = sorted(fetch(conn, r._SETTLE_OPEN, SETTLE))
        over = fetch(conn, r._OVER, {"rid": "r2"})
        head = fetch(conn, writer._HEAD)
    assert [(row.budget_id, row.period_start, row.worst_micro_usd) for row in settled] == [
        (1, DAY, 7), (2, DAY, 14), (3, DAY, 21)]
    assert all(row.period_start.tzinfo is UTC for row in settled)
    assert [tuple(row) for row in over] == [(4,)]
    assert [(row.seq, bytes(row.entry_hash), bytes(row.body)) for row in head] == [
        (2, bytes([3]) * 32, b'{"ts":"x\\u00e9"}' * 2)]


@pytest.mark.parametrize(("statement", "params"), RUNS)
def test_run_sends_what_sqlalchemy_sends_and_writes_the_same_rows(
    engine: Engine, statement: Any, params: Any
) -> None:
    old_count, old_sent, old_after = _sent(engine, lambda conn: conn.execute(statement, params).rowcount)
    new_count, new_sent, new_after = _sent(engine, lambda conn: run(conn, statement, params))
    many = isinstance(params, list) and len(params) > 1
    one = params[0] if isinstance(params, list) and not many else params
    keys = tuple(params[0] if many else one)
    assert statements._plan(engine.dialect, statement, keys, many) is not None  # the fast path
    assert new_sent == old_sent and len(new_sent) == 1
    if statement.is_update:  # SQLAlchemy reports an INSERT's rowcount only with preserve_rowcount
        assert new_count == old_count
    assert new_after == old_after


def test_an_executemany_rowcount_is_the_sum_of_the_rows_changed(engine: Engine) -> None:
    """``_HOLD``'s rowcount decides admission: 2 of 3 counters took their hold."""
    with engine.connect() as conn, conn.begin():
        assert run(conn, r._HOLD, HOLDS) == 2
        assert run(conn, r._HOLD, [HOLDS[0], HOLDS[2], HOLDS[0]]) == 3
        assert run(conn, r._HOLD, [HOLDS[1], HOLDS[1]]) == 0
        assert run(conn, r._HOLD, []) == 0
        assert conn.execute(select(budget_counters.c.reserved_micro_usd)
                            .order_by(budget_counters.c.budget_id)).scalars().all() == [190, 900, 130, 0]


EXPANDING = [  # (statement, parameters, rows): a batch's settlement reads, IN lists of any length
    (r._OPEN_OF, {"rids": ["r1", "r2"]}, 7),
    (r._OPEN_OF, {"rids": ["r2"]}, 4),
    (r._OPEN_OF, {"rids": []}, 0),
    (r._COUNTERS, {"ids": [1, 2, 4], "starts": [DAY]}, 3),
    (r._COUNTERS, {"ids": [3], "starts": [DAY, DAY + timedelta(days=1)]}, 1),
]


@pytest.mark.parametrize(("statement", "params", "count"), EXPANDING)
def test_an_expanding_in_sends_what_sqlalchemy_sends_for_each_length(
    engine: Engine, statement: Any, params: dict[str, Any], count: int
) -> None:
    old, old_sent, _ = _sent(engine, lambda conn: conn.execute(statement, params).all())
    new, new_sent, _ = _sent(engine, lambda conn: fetch(conn, statement, params))
    expanding = statements._plan(engine.dialect, statement, tuple(params), False)
    assert isinstance(expanding, statements._Expanding)
    assert expanding.plans[tuple(len(params[k]) for k in expanding.expanding)] is not None  # the fast path
    assert new_sent == old_sent and len(new_sent) == 1
    assert _rows(new) == _rows(old) and len(new) == count


def test_a_statement_with_a_python_side_default_goes_sqlalchemys_way(engine: Engine) -> None:
    """``spent_micro_usd`` left out: SQLAlchemy fills its default in; the same row is written."""
    counter = {"budget_id": 1, "period_start": DAY + timedelta(days=1), "reserved_micro_usd": 5}
    statement = insert(budget_counters)
    old, old_sent, old_after = _sent(engine, lambda conn: conn.execute(statement, counter))
    new, new_sent, new_after = _sent(engine, lambda conn: run(conn, statement, counter))
    assert statements._plan(engine.dialect, statement, tuple(counter), False) is None
    assert new_sent == old_sent and new_after == old_after and len(new_after[0]) == 5


def test_a_broken_constraint_is_sqlalchemys_integrity_error(engine: Engine) -> None:
    row = {"request_id": "r1", "budget_id": 1, "period_start": DAY, "worst_micro_usd": 1,
           "state": OPEN, "created_at": NOW, "expires_at": NOW}
    errors = []
    for send in (lambda conn: conn.execute(budget_reservations.insert(), row),
                 lambda conn: run(conn, budget_reservations.insert(), row),
                 lambda conn: run(conn, budget_reservations.insert(), [{**row, "request_id": "r9"}, row])):
        with pytest.raises(IntegrityError) as raised, engine.connect() as conn, conn.begin():
            send(conn)
        errors.append(raised.value)
    assert [type(e) for e in errors] == [IntegrityError] * 3
    assert len({type(e.orig) for e in errors}) == 1
    assert isinstance(errors[1].orig, engine.dialect.loaded_dbapi.IntegrityError)
    assert [e.statement for e in errors[1:]] == [errors[0].statement] * 2


def test_a_nul_in_a_text_parameter_is_refused_before_anything_is_sent(engine: Engine) -> None:
    marks = [{"rid": "r1", "b": n, "new_state": state, "amount": 9, "now": NOW}
             for n, state in ((1, "settled"), (2, "sett\x00led"))]
    with engine.connect() as conn, conn.begin():
        with pytest.raises(InvalidInput):
            fetch(conn, budgets_module._APPLICABLE, {"user_id": "al\x00ice", "operation": "x"})
        with pytest.raises(InvalidInput):
            run(conn, r._MARK_OPEN, marks)
        states = conn.execute(select(budget_reservations.c.state)).scalars().all()
    assert states == [OPEN] * 7


def test_an_engine_that_logs_its_statements_logs_these_and_hidden_parameters_stay_hidden(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    url = engine.url.render_as_string(hide_password=False)
    logging, hiding = create_engine(url, echo=True), create_engine(url, hide_parameters=True)
    try:
        with caplog.at_level("INFO", "sqlalchemy.engine"), logging.connect() as conn, conn.begin():
            assert [row.id for row in fetch(conn, budgets_module._APPLICABLE,
                                            {"user_id": "alice", "operation": "email-compose"})] == [1, 2, 3]
        assert any(m.startswith("SELECT budgets.id") for m in caplog.messages)
        row = {"request_id": "r1", "budget_id": 1, "period_start": DAY, "worst_micro_usd": 1,
               "state": OPEN, "created_at": NOW, "expires_at": NOW}
        with pytest.raises(IntegrityError) as raised, hiding.connect() as conn, conn.begin():
            run(conn, budget_reservations.insert(), row)
        assert "[SQL parameters hidden due to hide_parameters=True]" in str(raised.value)
        assert "'r1'" not in str(raised.value)
    finally:
        logging.dispose()
        hiding.dispose()
