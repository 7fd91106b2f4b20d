"""``on_exhausted = cheaper`` at the reservation level, on real SQLite and PostgreSQL: which
target a call is reserved on, the rule when several budgets apply, and the per-day counts of
refused and degraded calls (``budget_outcomes``) that ``opsgate budgets show`` reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from tests.budgets import ledgered_budget

from opsgate.clock import ManualClock
from opsgate.errors import InvalidInput
from opsgate.metering.budgets import BudgetStatus, budget_statuses
from opsgate.metering.errors import BudgetExceeded
from opsgate.metering.models import ANY, budget_outcomes, budget_reservations
from opsgate.metering.reservations import Reservation, extend, reserve

NOW = datetime(2026, 12, 4, 23, 59, 30, tzinfo=UTC)
CHAIN = (4_000, 3_000, 1_000)  # the first request's worst case at each target of the chain


def _reserve(engine: Engine, clock: ManualClock, request_id: str) -> Reservation:
    first, *cheaper = CHAIN
    return reserve(engine, clock, request_id=request_id, user_id="alice", operation="email-classify",
                   worst_micro_usd=first, ttl_s=60, cheaper=cheaper)


def _statuses(engine: Engine, at: datetime) -> dict[str, BudgetStatus]:
    return {s.budget.scope: s for s in budget_statuses(engine, at)}


def _outcomes(engine: Engine) -> set[tuple[str, int, str]]:
    o = budget_outcomes.c
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(select(o.request_id, o.budget_id, o.outcome))}  # type: ignore[misc]  # rows of three


def test_a_cheaper_budget_reserves_the_first_target_that_fits_and_counts_the_call_degraded(
    store: Engine,
) -> None:
    clock = ManualClock(NOW)
    budget = ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day",
                             limit_micro_usd=6_500, on_exhausted="cheaper")
    held = [_reserve(store, clock, f"r{i}") for i in range(3)]
    # 4,000 fits; then 2,500 is left: 3,000 does not fit, 1,000 does (twice)
    assert [(r.choice, r.degraded, r.worst_micro_usd) for r in held] == [
        (0, False, 4_000), (2, True, 1_000), (2, True, 1_000)]
    status = _statuses(store, NOW)["global"]
    assert (status.spent_micro_usd, status.reserved_micro_usd, status.left_micro_usd) == (0, 6_000, 500)
    assert (status.refused_today, status.degraded_today) == (0, 2)
    with pytest.raises(BudgetExceeded, match="nor at a cheaper target"):
        _reserve(store, clock, "r3")  # 500 left: no target fits
    status = _statuses(store, NOW)["global"]
    assert (status.reserved_micro_usd, status.refused_today, status.degraded_today) == (6_000, 1, 2)
    with store.connect() as conn:
        rows = dict(conn.execute(select(budget_reservations.c.request_id,
                                        budget_reservations.c.worst_micro_usd)).all())
    assert rows == {"r0": 4_000, "r1": 1_000, "r2": 1_000}
    assert _outcomes(store) == {("r1", budget.id, "degraded"), ("r2", budget.id, "degraded"),
                                ("r3", budget.id, "refused")}
    tomorrow = _statuses(store, NOW + timedelta(minutes=1))["global"]
    assert (tomorrow.refused_today, tomorrow.degraded_today) == (0, 0)  # counts are per UTC day


def test_a_refuse_budget_without_room_refuses_even_when_the_others_are_cheaper(store: Engine) -> None:
    clock = ManualClock(NOW)
    glob = ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="month",
                           limit_micro_usd=2_000, on_exhausted="cheaper")
    alice = ledgered_budget(store, clock, user_id="alice", operation=ANY, period="day",
                            limit_micro_usd=2_000)
    with pytest.raises(BudgetExceeded, match="user:alice"):
        _reserve(store, clock, "r1")
    assert _outcomes(store) == {("r1", glob.id, "refused"), ("r1", alice.id, "refused")}
    assert {s: (v.reserved_micro_usd, v.refused_today) for s, v in _statuses(store, NOW).items()} == {
        "global": (0, 1), "user:alice": (0, 1)}


def test_a_refuse_budget_with_room_lets_a_cheaper_one_degrade_the_call(store: Engine) -> None:
    clock = ManualClock(NOW)
    glob = ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="month",
                           limit_micro_usd=100_000)
    alice = ledgered_budget(store, clock, user_id="alice", operation=ANY, period="day",
                            limit_micro_usd=3_500, on_exhausted="cheaper")
    r = _reserve(store, clock, "r1")
    assert (r.choice, r.worst_micro_usd) == (1, 3_000)
    assert _outcomes(store) == {("r1", alice.id, "degraded")}
    assert {s: (v.reserved_micro_usd, v.degraded_today) for s, v in _statuses(store, NOW).items()} == {
        "global": (3_000, 0), "user:alice": (3_000, 1)}
    assert glob.on_exhausted == "refuse"


def test_an_extension_without_room_is_counted_refused(store: Engine) -> None:
    clock = ManualClock(NOW)
    budget = ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day",
                             limit_micro_usd=5_000, on_exhausted="cheaper")
    r = _reserve(store, clock, "r1")
    with store.begin() as conn, pytest.raises(BudgetExceeded, match="next request"):
        extend(conn, clock, r, 1_001)  # the refusal is caught inside the transaction, as the ledger does
    assert _outcomes(store) == {("r1", budget.id, "refused")}
    assert _statuses(store, NOW)["global"].reserved_micro_usd == 4_000


def test_set_budget_keeps_the_policy_unless_given_and_refuses_an_unknown_one(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=1,
                    on_exhausted="cheaper")
    changed = ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=2)
    assert (changed.limit_micro_usd, changed.on_exhausted) == (2, "cheaper")
    with pytest.raises(InvalidInput, match="on_exhausted"):
        ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=2,
                        on_exhausted="cheapest")
