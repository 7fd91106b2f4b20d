"""A crashed call's budget hold is released while gateways keep running (tester-crash F4): the
gateway's timer expires stale reservations every TTL / 2, never one still within its TTL, and
``opsgate ledger recover`` releases the reservation of every intent it closes as interrupted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from tests.budgets import ledgered_budget
from tests.gateways import gateway_settings

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.writer import Ledger
from opsgate.metering.budgets import budget_statuses
from opsgate.metering.enforcement import EnforcementHooks
from opsgate.metering.models import ANY, budget_reservations
from opsgate.metering.prices import PriceTable
from opsgate.metering.ratelimit import RateLimiter, RateLimits, make_request_log, make_token_windows
from opsgate.metering.reservations import reserve, settle
from opsgate.metering.service import MeteringService
from opsgate.routing.effective import reservation_ttl_problems
from opsgate.routing.policy import RouteConfigError
from opsgate.runtime import recover_interrupted, start_runtime

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
TTL_S = 900.0


def _service(engine: Engine, clock: ManualClock) -> MeteringService:
    limiter = RateLimiter(RateLimits(), make_request_log(None, "t"), make_token_windows(None, "t"))
    return MeteringService(engine, clock, PriceTable.load(), limiter, EnforcementHooks(), reservation_ttl_s=TTL_S)


def _states(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(budget_reservations.c.request_id, budget_reservations.c.state)).all()
    return {row.request_id: row.state for row in rows}


def _spent_reserved(engine: Engine, clock: ManualClock) -> tuple[int, int]:
    (status,) = budget_statuses(engine, clock.now())
    return status.spent_micro_usd, status.reserved_micro_usd


def test_the_gateway_timer_expires_a_stale_hold_every_half_ttl_and_never_a_live_one(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="month", limit_micro_usd=100_000)
    reserve(store, clock, request_id="crashed", user_id="alice", operation="email-classify",
            worst_micro_usd=4_000, ttl_s=TTL_S)
    service = _service(store, clock)
    seen: list[tuple[float, dict[str, str]]] = []

    async def sleep(seconds: float) -> None:  # each tick: what the previous run left, then time passes
        seen.append((seconds, _states(store)))
        if len(seen) == 4:
            raise asyncio.CancelledError
        if len(seen) == 2:  # a second call starts mid-way: it is within its TTL at the next runs
            reserve(store, clock, request_id="live", user_id="alice", operation="email-classify",
                    worst_micro_usd=1_000, ttl_s=TTL_S)
        clock.advance(seconds)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(service.expire_every(sleep))

    assert [s for s, _ in seen] == [450.0, 450.0, 450.0, 450.0]
    assert [states for _, states in seen] == [
        {"crashed": "open"},                   # t = 0
        {"crashed": "open"},                   # t = 450: within its TTL
        {"crashed": "open", "live": "open"},   # t = 900: not past expires_at (created + 900) yet
        {"crashed": "expired", "live": "open"},  # t = 1350: expired; "live" (450 s old) kept
    ]
    assert _spent_reserved(store, clock) == (4_000, 1_000)


def test_a_failed_run_is_logged_and_the_next_one_expires(store: Engine, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="month", limit_micro_usd=100_000)
    reserve(store, clock, request_id="crashed", user_id="alice", operation="email-classify",
            worst_micro_usd=4_000, ttl_s=TTL_S)
    service = _service(store, clock)
    runs: list[str] = []
    real_expire = service.expire

    def expire() -> list[str]:
        runs.append("run")
        if len(runs) == 1:
            raise OSError("database unreachable")
        return real_expire()

    service.expire = expire  # type: ignore[method-assign]
    ticks = 0

    async def sleep(seconds: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 4:
            raise asyncio.CancelledError
        clock.advance(1_000)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(service.expire_every(sleep))
    assert runs == ["run", "run", "run"]
    assert _states(store) == {"crashed": "expired"}
    assert "expiring budget reservations failed (OSError)" in caplog.text


def test_ledger_recover_releases_the_holds_of_the_intents_it_closes(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="month", limit_micro_usd=100_000)
    for request_id, worst in (("crashed-1", 4_000), ("crashed-2", 2_500), ("finished", 1_000)):
        reserve(store, clock, request_id=request_id, user_id="alice", operation="email-classify",
                worst_micro_usd=worst, ttl_s=TTL_S)
    with Ledger(store, clock) as ledger:
        for request_id in ("crashed-1", "crashed-2", "finished"):
            ledger.append_sync("intent", {"request_id": request_id, "user_id": "alice"})
        ledger.append_sync("result", {"request_id": "finished", "status": "ok"})
    assert _spent_reserved(store, clock) == (0, 7_500)
    clock.advance(60)  # well within the TTL: only recover's closing releases them
    with Ledger(store, clock) as ledger:
        closed = asyncio.run(recover_interrupted(store, ledger, clock, 0))
    assert sorted(closed) == ["crashed-1", "crashed-2"]
    assert _states(store) == {"crashed-1": "expired", "crashed-2": "expired", "finished": "open"}
    assert _spent_reserved(store, clock) == (6_500, 1_000)  # worst cases charged, holds released
    with Ledger(store, clock) as ledger:
        assert asyncio.run(recover_interrupted(store, ledger, clock, 0)) == []
    assert _spent_reserved(store, clock) == (6_500, 1_000)  # nothing charged twice


def test_a_late_settle_after_recover_corrects_the_charge(store: Engine) -> None:
    clock = ManualClock(NOW)
    ledgered_budget(store, clock, user_id=ANY, operation=ANY, period="month", limit_micro_usd=100_000)
    r = reserve(store, clock, request_id="slow", user_id="alice", operation="email-classify",
                worst_micro_usd=4_000, ttl_s=TTL_S)
    with Ledger(store, clock) as ledger:
        ledger.append_sync("intent", {"request_id": "slow", "user_id": "alice"})
        clock.advance(1)
        assert asyncio.run(recover_interrupted(store, ledger, clock, 0)) == ["slow"]
    assert _spent_reserved(store, clock) == (4_000, 0)
    settle(store, clock, r, 1_200, unknown_usage=False)
    assert _spent_reserved(store, clock) == (1_200, 0)


def test_a_ttl_a_call_could_outlast_refuses_start_up_before_anything_opens(tmp_path: Path) -> None:
    # provider_timeout_s 60 -> total_timeout_s 120; answer + repair request 240, + 2 s count wait
    settings = gateway_settings(tmp_path, provider_timeout_s=60.0, token_count_timeout_s=2.0,
                                budget_reservation_ttl_s=242.0)
    line = ("OPSGATE_BUDGET_RESERVATION_TTL_S (242 s) must be longer than the longest call of route "
            "'default' (242 s: twice total_timeout_s, the answer and its repair request, plus "
            "OPSGATE_TOKEN_COUNT_TIMEOUT_S), or a reservation could expire while its call is in flight")
    assert reservation_ttl_problems(settings) == [line]
    with pytest.raises(RouteConfigError) as caught:
        asyncio.run(start_runtime(settings))
    assert caught.value.problems == [line]
    assert not list(tmp_path.glob("*.db")) and not list(tmp_path.glob("*.sqlite"))  # nothing opened
    assert reservation_ttl_problems(settings.model_copy(update={"budget_reservation_ttl_s": 242.5})) == []
    assert reservation_ttl_problems(Settings(_env_file=None)) == []  # the defaults: 900 s > 242 s
