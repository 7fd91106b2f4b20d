"""Step 9 when the store refuses the result (tester-crash F3, F6): a call the provider already
served and billed is answered, its result kept pending and written once the store is back,
exactly once even when ``opsgate ledger recover`` races it; readiness says not ready meanwhile.

The store's refusal is injected the way a full disk shows itself to SQLite: the insert of the
call's ``ai_operation_log`` row fails with ``database or disk is full`` (sqlite3.OperationalError),
so the whole result transaction rolls back, as it does on a real full disk."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from opsgate.ledger import recovery
from opsgate.ledger.recovery import recover
from opsgate.ledger.writer import STORAGE_RECHECK_S
from opsgate.metering.budgets import set_budget
from opsgate.metering.models import ANY, budget_counters, budget_reservations
from opsgate.pipeline import Gateway
from opsgate.providers.errors import ServerError
from opsgate.routing.errors import AllProvidersFailed
from opsgate.store.models import ai_operation_log
from opsgate.testing import FakeProvider, GovernedGateway, gateway_settings, governed_gateway
from tests.budgets import ADMIN
from tests.paths import EXAMPLES
from tests.stores import fresh_postgres

CLASSIFY = {"raw": (EXAMPLES / "email-classify.eml").read_text()}


class DiskFull:
    """Fails the next ``times`` inserts into ``ai_operation_log`` (every one with ``times=None``)
    with SQLite's full-disk error (``error``: another exception, e.g. PostgreSQL's), counting the
    failures in ``failed``."""

    def __init__(self, times: int | None = None, error: Exception | None = None) -> None:
        self.times = times
        self.failed = 0
        self.error = error or sqlite3.OperationalError("database or disk is full")

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith("INSERT INTO AI_OPERATION_LOG"):
            return
        if self.times is not None and self.failed >= self.times:
            return
        self.failed += 1
        raise self.error


@contextmanager
def disk_full(engine: Engine, times: int | None = None, error: Exception | None = None) -> Iterator[DiskFull]:
    fault = DiskFull(times, error)
    event.listen(engine, "before_cursor_execute", fault)
    try:
        yield fault
    finally:
        event.remove(engine, "before_cursor_execute", fault)


def _no_waits(gateway: Gateway, tries: int = 3) -> None:
    """The in-call retries without their back-off (the test decides when the store is back)."""
    gateway._record_retry_delays_s = (0.0,) * tries


def _budget(governed: GovernedGateway) -> None:
    set_budget(governed.ledger, governed.clock, actor=ADMIN, user_id=ANY, operation=ANY, period="day",
               limit_micro_usd=10**9)


def _money(governed: GovernedGateway) -> tuple[list[str], tuple[int, int], int]:
    """(reservation states, (spent, reserved) of the one counter, ai_operation_log rows)."""
    with governed.engine.connect() as conn:
        states = conn.execute(select(budget_reservations.c.state)).scalars().all()
        counter = conn.execute(select(budget_counters.c.spent_micro_usd,
                                      budget_counters.c.reserved_micro_usd)).one()
        logged = len(conn.execute(select(ai_operation_log)).all())
    return sorted(states), (counter[0], counter[1]), logged


async def test_a_served_call_whose_result_is_refused_is_answered_and_recorded_once_the_store_returns(
    governed: GovernedGateway,
) -> None:
    _budget(governed)
    gateway = governed.gateway
    _no_waits(gateway)
    call = governed.call("email-classify", CLASSIFY)

    with disk_full(governed.engine) as fault:
        outcome = await gateway.govern(call)  # the old code raised LedgerUnavailable (503) here
        assert fault.failed == 4  # the first write and three retries within the call

        assert outcome.recorded is False and outcome.output["category"]
        assert outcome.cost_micro_usd > 0
        assert [kind for kind, _ in governed.entries(call.request_id)] == ["intent"]
        states, (spent, reserved), logged = _money(governed)
        assert states == ["open"] and spent == 0 and reserved > outcome.cost_micro_usd and logged == 0
        assert gateway.pending_results == 1 and gateway.storage_ready() is False
        assert await gateway.flush_pending() == 1  # still refused: kept
        assert fault.failed == 5

    assert await gateway.flush_pending() == 0
    [(first, _), (kind, result)] = governed.entries(call.request_id)
    assert (first, kind, result["status"]) == ("intent", "result", "ok")
    assert result["cost_micro_usd"] == outcome.cost_micro_usd
    assert _money(governed) == (["settled"], (outcome.cost_micro_usd, 0), 1)
    assert gateway.pending_results == 0 and gateway.storage_ready() is True

    assert await gateway.flush_pending() == 0  # nothing written twice
    assert [kind for kind, _ in governed.entries(call.request_id)] == ["intent", "result"]


async def test_a_short_refusal_is_bridged_within_the_call(governed: GovernedGateway) -> None:
    _budget(governed)
    _no_waits(governed.gateway)
    call = governed.call("email-classify", CLASSIFY)

    with disk_full(governed.engine, times=2) as fault:
        outcome = await governed.gateway.govern(call)

    assert fault.failed == 2 and outcome.recorded is True
    assert [kind for kind, _ in governed.entries(call.request_id)] == ["intent", "result"]
    assert _money(governed) == (["settled"], (outcome.cost_micro_usd, 0), 1)
    assert governed.gateway.pending_results == 0 and governed.gateway.storage_ready() is True


async def test_a_failed_call_keeps_its_own_error_and_its_record_is_written_later(
    governed: GovernedGateway,
) -> None:
    _budget(governed)
    _no_waits(governed.gateway, tries=1)
    governed.provider.script = [ServerError("anthropic", http_status=500)]
    call = governed.call("email-classify", CLASSIFY)

    with disk_full(governed.engine), pytest.raises(AllProvidersFailed) as failed:
        await governed.gateway.govern(call)

    assert failed.value.code == "provider_unavailable"  # not audit_unavailable
    assert governed.gateway.pending_results == 1
    assert await governed.gateway.flush_pending() == 0
    [(_, result)] = [e for e in governed.entries(call.request_id) if e[0] == "result"]
    assert (result["status"], result["error_code"]) == ("error", "provider_unavailable")
    states, (_, reserved), logged = _money(governed)
    assert states == ["settled"] and reserved == 0 and logged == 1


async def test_recovery_first_then_the_late_write_closes_the_intent_once(governed: GovernedGateway) -> None:
    _budget(governed)
    _no_waits(governed.gateway, tries=0)
    call = governed.call("email-classify", CLASSIFY)
    with disk_full(governed.engine):
        await governed.gateway.govern(call)
    governed.clock.advance(1)

    assert await recover(governed.engine, governed.ledger, governed.clock, older_than_s=0) == [call.request_id]
    assert await governed.gateway.flush_pending() == 0  # dropped: the intent was closed first

    results = [p for k, p in governed.entries(call.request_id) if k == "result"]
    assert [(r["status"], r["error_code"]) for r in results] == [("interrupted", "interrupted")]
    assert _money(governed)[2] == 0


async def test_a_late_write_first_then_a_recovery_that_read_the_log_before_it_writes_nothing(
    governed: GovernedGateway, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _budget(governed)
    _no_waits(governed.gateway, tries=0)
    call = governed.call("email-classify", CLASSIFY)
    with disk_full(governed.engine):
        await governed.gateway.govern(call)
    [(_, intent)] = governed.entries(call.request_id)
    stale = recovery.open_intents(governed.engine, "9999")  # read while the result was pending
    assert list(stale) == [call.request_id]

    assert await governed.gateway.flush_pending() == 0
    monkeypatch.setattr(recovery, "open_intents", lambda engine, before: stale)
    assert await recover(governed.engine, governed.ledger, governed.clock, older_than_s=0) == []

    results = [p for k, p in governed.entries(call.request_id) if k == "result"]
    assert [r["status"] for r in results] == ["ok"]


async def test_the_store_counts_as_refusing_writes_until_one_commits(governed: GovernedGateway) -> None:
    ledger, clock = governed.ledger, governed.clock
    assert ledger.storage_failing() is False
    with disk_full(governed.engine):
        with pytest.raises(Exception) as refused:
            await ledger.append("result", {"request_id": "r1"}, [(ai_operation_log, _row("r1", clock))])
        assert refused.value.code == "audit_unavailable"  # type: ignore[attr-defined]
    assert ledger.storage_failing() is True
    clock.advance(STORAGE_RECHECK_S)  # nothing written since: tried again by the next write
    assert ledger.storage_failing() is False
    with disk_full(governed.engine):
        with pytest.raises(Exception):
            await ledger.append("result", {"request_id": "r2"}, [(ai_operation_log, _row("r2", clock))])
    assert ledger.storage_failing() is True
    await ledger.append("intent", {"request_id": "r3"})
    assert ledger.storage_failing() is False


def _row(request_id: str, clock: Any) -> dict[str, Any]:
    return {"request_id": request_id, "user_id": "alice", "operation": "email-classify", "status": "ok",
            "latency_ms": 1.0, "cost_micro_usd": 1, "created_at": clock.now()}


@pytest.mark.postgres
async def test_on_postgresql_a_pending_result_is_written_once_and_a_stale_recovery_writes_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same promises on PostgreSQL (a restart shows as an OperationalError on the insert):
    the closed-call lookups and the settlement run under its advisory lock."""
    import psycopg

    with fresh_postgres("opsgate_record") as url:
        async with governed_gateway(gateway_settings(tmp_path, database_url=url), FakeProvider()) as governed:
            _budget(governed)
            _no_waits(governed.gateway, tries=1)
            call = governed.call("email-classify", CLASSIFY)
            restart = psycopg.OperationalError("terminating connection due to administrator command")
            with disk_full(governed.engine, error=restart):
                outcome = await governed.gateway.govern(call)
            assert outcome.recorded is False and governed.gateway.storage_ready() is False
            stale = recovery.open_intents(governed.engine, "9999")
            assert list(stale) == [call.request_id]

            assert await governed.gateway.flush_pending() == 0
            monkeypatch.setattr(recovery, "open_intents", lambda engine, before: stale)
            assert await recover(governed.engine, governed.ledger, governed.clock, older_than_s=0) == []

            results = [p for k, p in governed.entries(call.request_id) if k == "result"]
            assert [(r["status"], r["cost_micro_usd"]) for r in results] == [("ok", outcome.cost_micro_usd)]
            assert _money(governed) == (["settled"], (outcome.cost_micro_usd, 0), 1)
            assert governed.gateway.storage_ready() is True
