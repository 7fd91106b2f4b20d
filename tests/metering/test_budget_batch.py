"""The intents of one ledger batch hold their budgets at once, and its results settle at once
(issue 21): one update per budget counter for the whole batch, on real SQLite and PostgreSQL,
with the limits and the settlements exactly as one call at a time: when the batch does not fit
at once, the calls that fit are admitted, in order, and the others refused; each settlement names
the budgets over their limit once its own charge was added, in order."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from tests.budgets import ledgered_budget

from opsgate.clock import ManualClock
from opsgate.ledger.writer import Ledger
from opsgate.metering.budgets import budget_statuses
from opsgate.metering.enforcement import EnforcementHooks
from opsgate.metering.errors import BudgetExceeded
from opsgate.metering.models import ANY, REFUSED, SHADOW, budget_outcomes, budget_reservations
from opsgate.metering.prices import PriceTable
from opsgate.metering.reservations import expire_reservations
from opsgate.metering.ratelimit import RateLimiter, RateLimits
from opsgate.metering.service import MeteringService
from opsgate.metering.worstcase import attempt_worst_case_micro_usd
from opsgate.providers.base import CompletionRequest

NOW = datetime(2026, 12, 5, 9, tzinfo=UTC)
REQUEST = CompletionRequest(system="Classify.", user="hello", max_tokens=100, json_schema={"type": "object"})
MODEL = "claude-opus-4-5"


def _service(engine: Engine, clock: ManualClock) -> MeteringService:
    return MeteringService(engine, clock, PriceTable.load(), RateLimiter(RateLimits()),
                           EnforcementHooks(), reservation_ttl_s=60)


async def _one_batch(engine: Engine, clock: ManualClock, calls: list[tuple[str, str, bool]]) -> list[Any]:
    """Append an intent holding ``REQUEST``'s worst case for each (request id, user, shadow) of
    ``calls``, all queued before the writer starts (one ledger batch); each outcome, in order."""
    service, ledger = _service(engine, clock), Ledger(engine, clock)
    tasks = [asyncio.create_task(ledger.append(
        "intent", {"request_id": rid},
        work=service.reserve_in(rid, user, "email-classify", REQUEST, MODEL, shadow=shadow)))
        for rid, user, shadow in calls]
    await asyncio.sleep(0)  # every append queued: the writer's first batch takes them all
    ledger.start()
    try:
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        ledger.close()
        assert ledger.transactions == 1


@contextmanager
def _counter_updates(engine: Engine, table: str = "budget_counters") -> Iterator[list[int]]:
    """The number of parameter sets of each ``UPDATE <table>`` sent while inside."""
    seen: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(f"UPDATE {table.upper()}"):
            seen.append(len(parameters) if many else 1)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _reserved(engine: Engine) -> dict[str, int]:
    return {s.budget.scope: s.reserved_micro_usd for s in budget_statuses(engine, NOW)}


async def test_a_batch_of_intents_holds_each_counter_with_one_statement(store: Engine) -> None:
    clock = ManualClock(NOW)
    for user in (ANY, "alice"):
        ledgered_budget(store, clock, user_id=user, operation=ANY, period="day", limit_micro_usd=10**9)
    ledgered_budget(store, clock, user_id=ANY, operation="email-classify", period="month",
                    limit_micro_usd=10**9)
    worst = attempt_worst_case_micro_usd(REQUEST, MODEL, PriceTable.load())
    await _one_batch(store, clock, [("first", "alice", False)])  # the period's counters now exist
    calls = [(f"r{i}", "alice" if i % 2 else "bob", False) for i in range(12)]
    with _counter_updates(store) as updates:
        held = await _one_batch(store, clock, calls)
    assert updates == [3]  # one statement, one conditional update per counter (was 12 statements)
    assert [(h.work_result.request_id, h.work_result.worst_micro_usd, len(h.work_result.budgets))
            for h in held] == [(f"r{i}", worst, 3 if i % 2 else 2) for i in range(12)]
    assert _reserved(store) == {"global": 13 * worst, "user:alice": 7 * worst,
                                "operation:email-classify": 13 * worst}
    with store.connect() as conn:
        rows = conn.execute(select(budget_reservations.c.request_id)).scalars().all()
    assert Counter(rows) == {"first": 3, **{f"r{i}": 3 if i % 2 else 2 for i in range(12)}}


async def test_a_batch_that_does_not_fit_at_once_admits_in_order_what_fits(store: Engine) -> None:
    clock = ManualClock(NOW)
    worst = attempt_worst_case_micro_usd(REQUEST, MODEL, PriceTable.load())
    budget = ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day",
                             limit_micro_usd=5 * worst + worst // 2)
    await _one_batch(store, clock, [("first", "alice", False)])
    outcomes = await _one_batch(store, clock, [(f"r{i}", "alice", False) for i in range(8)])
    assert [type(o).__name__ for o in outcomes] == ["AppendedEntry"] * 4 + ["BudgetExceeded"] * 4
    assert all(isinstance(o, BudgetExceeded) and o.status == 402 for o in outcomes[4:])
    assert _reserved(store) == {"global": 5 * worst}  # never above the limit
    with store.connect() as conn:
        refused = conn.execute(select(budget_outcomes.c.request_id, budget_outcomes.c.budget_id,
                                      budget_outcomes.c.outcome)).all()
    assert sorted(tuple(r) for r in refused) == [(f"r{i}", budget.id, REFUSED) for i in range(4, 8)]


async def test_a_shadow_call_without_a_shadow_budget_is_refused_and_its_batch_admitted(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=10**9)
    outcomes = await _one_batch(store, clock, [("r0", "alice", False), ("s0", "alice", True),
                                               ("r1", "alice", False)])
    assert isinstance(outcomes[1], BudgetExceeded) and "No shadow budget" in str(outcomes[1])
    assert [o.work_result.request_id for o in (outcomes[0], outcomes[2])] == ["r0", "r1"]
    ledgered_budget(store, clock, user_id=ANY, operation=SHADOW, period="day", limit_micro_usd=10**9)
    outcomes = await _one_batch(store, clock, [("r2", "alice", False), ("s1", "alice", True)])
    assert [len(o.work_result.budgets) for o in outcomes] == [1, 1]
    worst = attempt_worst_case_micro_usd(REQUEST, MODEL, PriceTable.load())
    assert _reserved(store) == {"global": 3 * worst, "shadow": worst}


async def _settle_batch(engine: Engine, clock: ManualClock, charges: list[tuple[Any, int]]) -> list[Any]:
    """Append a result settling each (reservation, actual micro-USD) of ``charges``, all in one
    ledger batch; each settlement, in order."""
    service, ledger = _service(engine, clock), Ledger(engine, clock)
    tasks = [asyncio.create_task(ledger.append(
        "result", {"request_id": r.request_id}, work=service.settle_in(r, actual, unknown_usage=False)))
        for r, actual in charges]
    await asyncio.sleep(0)
    ledger.start()
    try:
        return [result.work_result for result in await asyncio.gather(*tasks)]
    finally:
        ledger.close()
        assert ledger.transactions == 1


def _spent(engine: Engine) -> dict[str, tuple[int, int]]:
    return {s.budget.scope: (s.spent_micro_usd, s.reserved_micro_usd) for s in budget_statuses(engine, NOW)}


async def test_a_batch_of_results_moves_each_counter_with_one_statement(store: Engine) -> None:
    clock = ManualClock(NOW)
    for user in (ANY, "alice"):
        ledgered_budget(store, clock, user_id=user, operation=ANY, period="day", limit_micro_usd=10**9)
    held = [h.work_result for h in await _one_batch(
        store, clock, [(f"r{i}", "alice" if i % 2 else "bob", False) for i in range(10)])]
    with _counter_updates(store) as updates:
        settled = await _settle_batch(store, clock, [(r, 100 + i) for i, r in enumerate(held)])
    assert updates == [2]  # one statement, one move per counter (was 10 statements)
    assert [(s.charged_micro_usd, s.state, s.over_limit) for s in settled] == [
        (100 + i, "settled", ()) for i in range(10)]
    assert _spent(store) == {"global": (sum(range(100, 110)), 0),
                             "user:alice": (sum(100 + i for i in range(1, 10, 2)), 0)}


async def test_a_batch_of_results_marks_its_reservations_with_one_statement(store: Engine) -> None:
    clock = ManualClock(NOW)
    for user in (ANY, "alice"):
        ledgered_budget(store, clock, user_id=user, operation=ANY, period="day", limit_micro_usd=10**9)
    held = [h.work_result for h in await _one_batch(
        store, clock, [(f"r{i}", "alice" if i % 2 else "bob", False) for i in range(6)])]
    with _counter_updates(store, "budget_reservations") as marks:
        await _settle_batch(store, clock, [(r, 10 + i) for i, r in enumerate(held)])
    # one executemany, one parameter set per reservation row: alice's 3 calls hold 2 budgets,
    # bob's 3 one (was one update per call)
    assert marks == [9]
    with store.connect() as conn:
        rows = conn.execute(select(budget_reservations.c.request_id, budget_reservations.c.state,
                                   budget_reservations.c.actual_micro_usd)).all()
    assert sorted(rows) == sorted([(f"r{i}", "settled", 10 + i) for i in range(6)]
                                  + [(f"r{i}", "settled", 10 + i) for i in range(1, 6, 2)])


async def test_each_settlement_of_a_batch_names_the_budgets_its_own_charge_took_over(store: Engine) -> None:
    clock = ManualClock(NOW)
    worst = attempt_worst_case_micro_usd(REQUEST, MODEL, PriceTable.load())
    budget = ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=3 * worst)
    held = [h.work_result for h in await _one_batch(store, clock, [(f"r{i}", "alice", False) for i in range(3)])]
    settled = await _settle_batch(store, clock, list(zip(held, (worst, 2 * worst + 1, 0), strict=True)))
    # in order: w (spent w), then 2w + 1 (3w + 1 > 3w: over), then 0 (still over)
    assert [s.over_limit for s in settled] == [(), (budget,), (budget,)]
    assert _spent(store) == {"global": (3 * worst + 1, 0)}


async def test_a_batch_with_an_expired_call_settles_each_call_as_one_by_one(store: Engine) -> None:
    clock = ManualClock(NOW)
    worst = attempt_worst_case_micro_usd(REQUEST, MODEL, PriceTable.load())
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=10**9)
    late = (await _one_batch(store, clock, [("late", "alice", False)]))[0].work_result
    clock.advance(61)
    assert expire_reservations(store, clock) == ["late"]  # charged its worst case
    fresh = (await _one_batch(store, clock, [("fresh", "alice", False)]))[0].work_result
    settled = await _settle_batch(store, clock, [(late, 10), (fresh, 20)])
    assert [(s.charged_micro_usd, s.state) for s in settled] == [(10, "settled"), (20, "settled")]
    assert _spent(store) == {"global": (30, 0)}  # the late settle corrected the worst case to 10
