"""Reserve / settle / expire against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select
from tests.budgets import ledgered_budget

from opsgate.clock import ManualClock
from opsgate.errors import InvalidInput
from opsgate.metering.budgets import budget_statuses, period_start, usd_to_micro
from opsgate.metering.errors import BudgetExceeded
from opsgate.metering.models import ANY, budget_reservations
from opsgate.metering.reservations import expire_reservations, extend, reserve, settle

NOW = datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC)


def _reserve(engine: Engine, clock: ManualClock, request_id: str, worst: int, *,
             user: str = "alice", op: str = "email-classify"):  # type: ignore[no-untyped-def]
    return reserve(engine, clock, request_id=request_id, user_id=user, operation=op,
                   worst_micro_usd=worst, ttl_s=60)


def _counters(engine: Engine, clock: ManualClock, at: datetime | None = None
              ) -> dict[str, tuple[int, int]]:
    return {s.budget.scope + "/" + s.budget.period: (s.spent_micro_usd, s.reserved_micro_usd)
            for s in budget_statuses(engine, at or clock.now())}


def test_periods_are_utc_calendar_day_and_month() -> None:
    local = datetime(2026, 12, 1, 1, 30, tzinfo=UTC).astimezone()
    assert period_start("day", local) == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_start("month", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        period_start("week", NOW)


def test_usd_amounts_become_whole_micro_usd() -> None:
    assert usd_to_micro("0.010") == 10_000
    assert usd_to_micro("12.345678") == 12_345_678
    assert usd_to_micro("1.00000000000000000000000000000000") == 1_000_000
    for bad in ("0.0000001", "-1", "abc", "NaN", "1_000", "\uff11", "1e3", "1.0000000000000000000000000000001"):
        with pytest.raises(InvalidInput):
            usd_to_micro(bad)


def test_reserve_holds_against_every_applicable_budget_and_settle_releases(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="month", limit_micro_usd=100_000)
    ledgered_budget(store, clock, user_id="alice", operation=ANY, period="day", limit_micro_usd=10_000)
    ledgered_budget(store, clock, user_id="bob", operation=ANY, period="day", limit_micro_usd=10_000)
    ledgered_budget(store, clock, user_id="alice", operation="email-compose", period="day",
                    limit_micro_usd=1)
    r = _reserve(store, clock, "r1", 4_000)
    assert [b.scope for b in r.budgets] == ["global", "user:alice"]
    assert _counters(store, clock)["global/month"] == (0, 4_000)
    assert _counters(store, clock)["user:alice/day"] == (0, 4_000)
    assert _counters(store, clock)["user:bob/day"] == (0, 0)
    result = settle(store, clock, r, 1_234, unknown_usage=False)
    assert (result.charged_micro_usd, result.state, result.over_limit) == (1_234, "settled", ())
    assert _counters(store, clock)["user:alice/day"] == (1_234, 0)
    assert _counters(store, clock)["global/month"] == (1_234, 0)


def test_refusal_rolls_back_every_budget(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=100_000)
    ledgered_budget(store, clock, user_id="alice", operation="email-classify", period="day",
                    limit_micro_usd=5_000)
    _reserve(store, clock, "r1", 4_000)
    with pytest.raises(BudgetExceeded) as info:
        _reserve(store, clock, "r2", 4_000)
    assert info.value.status == 402 and "user:alice/operation:email-classify" in info.value.detail
    assert _counters(store, clock)["global/day"] == (0, 4_000)  # r2's hold on global undone
    with store.connect() as conn:
        ids = conn.execute(select(budget_reservations.c.request_id).distinct()).scalars().all()
    assert ids == ["r1"]


def test_unknown_usage_is_charged_the_worst_case_and_flagged(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=10_000)
    r = _reserve(store, clock, "r1", 4_000)
    result = settle(store, clock, r, 10, unknown_usage=True)
    assert (result.charged_micro_usd, result.state) == (4_000, "unknown_usage")
    assert _counters(store, clock)["global/day"] == (4_000, 0)


def test_a_charge_above_the_worst_case_is_reported_over_limit(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=5_000)
    r = _reserve(store, clock, "r1", 4_000)
    result = settle(store, clock, r, 6_000, unknown_usage=False)
    assert [b.scope for b in result.over_limit] == ["global"]
    assert _counters(store, clock)["global/day"] == (6_000, 0)


def test_crashed_reservation_expires_at_its_worst_case_then_a_late_settle_corrects(
    store: Engine,
) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="month", limit_micro_usd=10_000)
    r = _reserve(store, clock, "crashed", 4_000)
    assert expire_reservations(store, clock) == []  # not expired yet
    clock.advance(61)  # past midnight too: still charged to the period it reserved in
    assert expire_reservations(store, clock) == ["crashed"]
    assert _counters(store, clock, NOW)["global/month"] == (4_000, 0)
    assert _counters(store, clock)["global/month"] == (0, 0)  # December is untouched
    with store.connect() as conn:
        state = conn.execute(select(budget_reservations.c.state)).scalar_one()
    assert state == "expired"
    settle(store, clock, r, 1_500, unknown_usage=False)  # the request finally reports
    assert _counters(store, clock, NOW)["global/month"] == (1_500, 0)
    assert expire_reservations(store, clock) == []


def test_no_budget_means_nothing_is_written(store: Engine) -> None:
    clock = ManualClock(NOW)
    r = _reserve(store, clock, "r1", 4_000)
    assert r.budgets == ()
    assert settle(store, clock, r, 7, unknown_usage=False).charged_micro_usd == 7
    with store.connect() as conn:
        assert conn.execute(select(budget_reservations)).all() == []


def test_threads_racing_one_store_never_exceed_the_limit(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="day", limit_micro_usd=10_000)
    admitted, refused = [], []
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            _reserve(store, clock, f"r{i}", 4_000)
            admitted.append(i)
        except BudgetExceeded:
            refused.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(admitted), len(refused)) == (2, 14)
    assert _counters(store, clock)["global/day"] == (0, 8_000)


def test_extend_holds_more_on_every_budget_all_or_nothing_and_settle_releases_it(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="month", limit_micro_usd=100_000)
    ledgered_budget(store, clock, user_id="alice", operation=ANY, period="day", limit_micro_usd=10_000)
    r = _reserve(store, clock, "r1", 4_000)
    with store.begin() as conn:
        extend(conn, clock, r, 5_000)
    assert _counters(store, clock) == {"global/month": (0, 9_000), "user:alice/day": (0, 9_000)}
    with pytest.raises(BudgetExceeded, match="user:alice"), store.begin() as conn:
        extend(conn, clock, r, 1_001)  # the day budget has 1,000 left: nothing is held anywhere
    assert _counters(store, clock) == {"global/month": (0, 9_000), "user:alice/day": (0, 9_000)}
    with store.connect() as conn:
        held = conn.execute(select(budget_reservations.c.worst_micro_usd)).scalars().all()
    assert held == [9_000, 9_000]
    result = settle(store, clock, r, 4_500, unknown_usage=False, estimated=True)
    assert (result.charged_micro_usd, result.state) == (4_500, "unknown_usage")
    assert _counters(store, clock) == {"global/month": (4_500, 0), "user:alice/day": (4_500, 0)}
    with pytest.raises(BudgetExceeded, match="no longer open"), store.begin() as conn:
        extend(conn, clock, r, 1)  # a settled (or expired) reservation cannot grow
