"""The service over a real SQLite database and ledger: toggles, opt-ins, snapshot refresh, metrics
from ai_operation_log, rollouts from start to rollback and escalation, all on a manual clock."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text
from tests.ledgered import entries
from tests.rollout.rollout_helpers import at_once, ledger_kinds

from opsgate.clock import ManualClock
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.verify import verify
from opsgate.ledger.writer import Ledger
from opsgate.rollout.bucketing import bucket
from opsgate.rollout.controller import Action, Plan, Stage, State
from opsgate.rollout.errors import InvalidPlan, OperationDisabled, RolloutConflict
from opsgate.rollout.metrics import metrics_from_log
from opsgate.rollout.service import (
    SEED_ACTOR,
    RollbackReport,
    RolloutEvent,
    RolloutService,
    ToggleChange,
    disable_operation,
)
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.security.users import add_user
from opsgate.store.db import make_engine, upgrade
from opsgate.store.models import ai_operation_log

OPS = ["email-compose", "email-classify", "task-breakdown"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'rollout.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def service(engine: Engine, clock: ManualClock) -> Iterator[RolloutService]:
    ledger = Ledger(engine, clock)
    ledger.start()
    svc = RolloutService(engine, ledger, clock, ToggleSnapshot(engine, clock, refresh_s=5))
    svc.ensure_toggles(OPS)
    yield svc
    ledger.close()


def log_calls(engine: Engine, clock: ManualClock, operation: str, ok: int, failed: int,
              latency_ms: float = 300.0, user: str = "u") -> None:
    rows = [{"request_id": uuid.uuid4().hex, "user_id": f"{user}{i}", "operation": operation,
             "status": "ok" if i < ok else "error", "error_code": None if i < ok else "provider_unavailable",
             "attempts": 1, "latency_ms": latency_ms, "input_tokens": 10, "output_tokens": 5,
             "cache_write_tokens": 0, "cache_read_tokens": 0, "reasoning_tokens": 0,
             "cost_micro_usd": 150, "created_at": clock.now()} for i in range(ok + failed)]
    with engine.begin() as conn:
        conn.execute(insert(ai_operation_log), rows)


def test_rollout_new_operations_start_disabled_with_opt_in(service: RolloutService, engine: Engine) -> None:
    toggles = {t.operation: t for t in service.list_toggles()}
    assert set(toggles) == set(OPS)
    t = toggles["email-compose"]
    assert (t.enabled, t.rollout_percentage, t.group_id, t.opt_in_required, t.kill_switch, t.updated_by) == (
        False, 0, "email-compose", True, False, SEED_ACTOR)
    assert service.ensure_toggles(OPS + ["calendar-prep"]) == ["calendar-prep"]
    kinds = [k for k, _ in ledger_kinds(engine)]
    assert kinds == ["toggle.created"] * 4
    verdict = service.snapshot.check("email-compose", "alice")
    assert (verdict.allowed, verdict.reason) == (False, "disabled")


def test_rollout_toggle_evaluation_order_and_refusals(service: RolloutService) -> None:
    snap = service.snapshot
    service.set_toggle("email-compose", ToggleChange(enabled=True, rollout_percentage=100), "root")
    assert snap.check("email-compose", "alice").reason == "opt_in_required"
    with pytest.raises(OperationDisabled) as refused:
        snap.require("email-compose", "alice")
    assert (refused.value.status, refused.value.code, refused.value.reason) == (403, "operation_disabled",
                                                                               "opt_in_required")
    assert "alice" not in refused.value.detail
    service.set_opt_ins("alice", {"email-compose": True})
    assert snap.require("email-compose", "alice").bucket == bucket("email-compose", "alice")
    service.set_toggle("email-compose", ToggleChange(rollout_percentage=bucket("email-compose", "alice") - 1), "root")
    assert snap.check("email-compose", "alice").reason == "not_in_rollout"
    service.set_toggle("email-compose", ToggleChange(kill_switch=True, rollout_percentage=100), "root")
    assert snap.check("email-compose", "alice").reason == "kill_switch"
    assert snap.check("no-such-op", "alice").reason == "disabled"


def test_rollout_every_toggle_change_is_ledgered_with_before_and_after(service: RolloutService, engine: Engine) -> None:
    service.set_toggle("email-classify", ToggleChange(enabled=True, rollout_percentage=5, group_id="g1"),
                       "root", "canary by hand")
    kind, payload = ledger_kinds(engine)[-1]
    assert kind == "toggle.set"
    assert payload["actor"] == "root" and payload["reason"] == "canary by hand"
    assert payload["before"] == {"enabled": False, "rollout_percentage": 0, "group_id": "email-classify",
                                 "opt_in_required": True, "kill_switch": False}
    assert payload["after"]["rollout_percentage"] == 5 and payload["after"]["group_id"] == "g1"
    assert verify(engine).ok


@pytest.mark.parametrize("change", [ToggleChange(rollout_percentage=101), ToggleChange(rollout_percentage=-1),
                                    ToggleChange(group_id="")])
def test_rollout_invalid_toggle_changes_are_refused_before_the_ledger(
    service: RolloutService, engine: Engine, change: ToggleChange
) -> None:
    before = len(ledger_kinds(engine))
    with pytest.raises(InvalidPlan):
        service.set_toggle("email-compose", change, "root")
    assert len(ledger_kinds(engine)) == before


def test_rollout_snapshot_sees_other_processes_after_refresh(
    service: RolloutService, engine: Engine, clock: ManualClock
) -> None:
    other = ToggleSnapshot(engine, clock, refresh_s=5)
    assert other.check("task-breakdown", "bob").allowed is False
    service.set_toggle("task-breakdown", ToggleChange(enabled=True, rollout_percentage=100,
                                                      opt_in_required=False), "root")
    assert other.check("task-breakdown", "bob").allowed is False  # stale until the next poll
    clock.advance(5)
    assert other.check("task-breakdown", "bob").allowed is True
    disable_operation(engine, "task-breakdown", "budget enforcement failed", "metering", ledger=service.ledger, clock=clock)
    clock.advance(5)
    assert other.check("task-breakdown", "bob").reason == "disabled"
    assert ledger_kinds(engine)[-1][1]["actor"] == "metering"


def test_rollout_opt_ins_and_adoption(service: RolloutService, engine: Engine, clock: ManualClock) -> None:
    users = [f"user-{i}" for i in range(200)]
    for u in users:
        add_user(engine, clock, u)
    service.set_toggle("email-compose", ToggleChange(enabled=True, rollout_percentage=25), "root")
    eligible = [u for u in users if bucket("email-compose", u) <= 25]
    for u in eligible[:3] + [u for u in users if u not in eligible][:2]:
        service.set_opt_ins(u, {"email-compose": True})
    service.set_opt_ins(eligible[3], {"email-compose": False})
    report = service.adoption()
    assert report["email-compose"] == {"eligible": len(eligible), "opted_in": 3,
                                       "rate_ppm": 3_000_000 // len(eligible)}
    assert report["email-classify"] == {"eligible": 0, "opted_in": 0, "rate_ppm": 0}
    assert service.get_opt_ins(eligible[0]) == {"email-classify": False, "email-compose": True,
                                                "task-breakdown": False}


def test_rollout_metrics_from_log_exact_p99_and_cohorts(engine: Engine, clock: ManualClock) -> None:
    start = clock.now()
    for ms in range(1, 201):  # canary latencies 1..200 ms
        log_calls(engine, clock, "email-compose", 1, 0, latency_ms=float(ms), user=f"c{ms}-")
    log_calls(engine, clock, "email-compose", 0, 1, latency_ms=500.0)
    log_calls(engine, clock, "email-classify", 90, 10, latency_ms=50.0)
    clock.advance(1)
    canary, control = metrics_from_log(engine, ["email-compose"], start, clock.now())
    assert (canary.requests, canary.errors, canary.cost_per_request_micro_usd) == (201, 1, 150)
    assert canary.p99_latency_ms == 199.0  # nearest rank: ceil(0.99 * 201) = the 199th of 201
    assert canary.avg_latency_ms == pytest.approx((sum(range(1, 201)) + 500) / 201)
    assert (control.requests, control.errors, control.p99_latency_ms) == (100, 10, 50.0)
    only_c1, rest = metrics_from_log(engine, ["email-compose"], start, clock.now(),
                                     in_canary=lambda op, user: user.startswith("c1-"))
    assert only_c1.requests == 1 and rest.requests == 300


def test_rollout_start_promote_complete(service: RolloutService, clock: ManualClock) -> None:
    plan = Plan((Stage(5, 3600), Stage(50, 3600)), observation_s=3600)
    rollout = service.start_rollout(["email-compose", "email-classify"], plan, "root")
    t = service.get_toggle("email-compose")
    assert (t.enabled, t.rollout_percentage, t.updated_by) == (True, 5, f"rollout:{rollout.id}")
    with pytest.raises(RolloutConflict):
        service.start_rollout(["email-compose"], plan, "root")
    actions = []
    for _ in range(3):
        clock.advance(3600)
        log_calls(service.engine, clock, "email-compose", 300, 0)
        actions.append(service.evaluate(rollout.id).action)
    assert actions == [Action.PROMOTE, Action.PROMOTE, Action.COMPLETE]
    assert service.get_toggle("email-classify").rollout_percentage == 100
    assert service.get_rollout(rollout.id).state.state is State.COMPLETED
    history = service.history(rollout.id)
    assert [h["action"] for h in history] == ["start", "promote", "promote", "complete"]
    assert history[1]["numbers"]["canary_requests"] == 300
    assert service.evaluate(rollout.id) is None


def test_rollout_automatic_rollback_banner_alert_and_verification(
    service: RolloutService, engine: Engine, clock: ManualClock
) -> None:
    alerts: list[RolloutEvent] = []
    service.listeners.append(alerts.append)
    rollout = service.start_rollout(["email-compose"], Plan(), "root")
    clock.advance(600)
    log_calls(engine, clock, "email-compose", 190, 10)  # 5 %
    decision = service.evaluate(rollout.id)
    assert decision.action is Action.ROLLBACK
    assert service.get_toggle("email-compose").enabled is False
    assert service.snapshot.check("email-compose", "anyone").reason == "disabled"
    [banner] = service.banners()
    assert banner["operations"] == ["email-compose"] and "temporarily unavailable" in banner["message"]
    assert [(a.kind, a.severity, a.numbers["canary_errors"]) for a in alerts] == [("rollout.rolled_back", "P2", 10)]
    for _ in range(3):  # three evaluations while the verification is pending (tester-ops F11)
        clock.advance(60)
        assert service.evaluate(rollout.id).action is Action.HOLD
    clock.advance(120)
    assert service.evaluate(rollout.id).action is Action.VERIFIED
    assert service.get_rollout(rollout.id).state.state is State.ROLLED_BACK
    service.set_toggle("email-compose", ToggleChange(enabled=True), "root", "fixed")
    assert service.banners() == []
    decisions = [p for k, p in ledger_kinds(engine) if k == "rollout.decision"]
    # the waits are not decisions: neither ledgered nor in the history
    assert [d["action"] for d in decisions] == ["start", "rollback", "verified"]
    assert [h["action"] for h in service.history(rollout.id)] == ["start", "rollback", "verified"]
    assert decisions[1]["numbers"]["canary_error_ppm"] == 50_000
    assert verify(engine).ok


def test_rollout_rollback_that_does_not_drop_errors_escalates(
    service: RolloutService, engine: Engine, clock: ManualClock
) -> None:
    alerts: list[RolloutEvent] = []
    service.listeners.append(alerts.append)
    rollout = service.start_rollout(["task-breakdown"], Plan(), "root")
    service.rollback_operations(["task-breakdown"], "bad answers reported", "root")
    clock.advance(270)
    log_calls(engine, clock, "task-breakdown", 5, 5)  # a replica still serving it, failing
    clock.advance(30)
    assert service.evaluate(rollout.id).action is Action.ESCALATE
    assert [(a.kind, a.severity) for a in alerts] == [("rollout.rolled_back", "P2"), ("rollout.escalated", "P1")]
    assert service.get_rollout(rollout.id).state.state is State.ESCALATED


def test_rollout_kill_switch_rolls_back_the_active_rollout(service: RolloutService) -> None:
    rollout = service.start_rollout(["email-classify"], Plan(), "root")
    service.set_toggle("email-classify", ToggleChange(kill_switch=True), "oncall", "page")
    assert service.get_rollout(rollout.id).state.state is State.ROLLING_BACK
    assert service.history(rollout.id)[-1]["event"] == "kill_switch"
    with pytest.raises(RolloutConflict):
        service.advance(rollout.id, "root")


def test_rollout_rollback_all_disables_every_operation(service: RolloutService) -> None:
    for op in OPS:
        service.set_toggle(op, ToggleChange(enabled=True, rollout_percentage=100), "root")
    assert service.rollback_operations(None, "incident 42", "root") == RollbackReport(sorted(OPS), [])
    assert not any(t.enabled for t in service.list_toggles())


def test_rollout_sandbox_enables_only_untouched_toggles(service: RolloutService, engine: Engine) -> None:
    service.set_toggle("email-classify", ToggleChange(rollout_percentage=10), "root")
    assert service.enable_for_sandbox() == ["email-compose", "task-breakdown"]
    t = service.get_toggle("email-compose")
    assert (t.enabled, t.rollout_percentage, t.opt_in_required, t.updated_by) == (True, 100, False, "sandbox")
    assert service.get_toggle("email-classify").enabled is False
    assert service.enable_for_sandbox() == []
    assert json.dumps(ledger_kinds(engine)[-1][1]).count("sandbox") >= 1


# a decision cut short half-way is completed from the saved rollout state -------------------
def refuse_next_toggle_write(service: RolloutService, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ledger refuses the next ``toggle.set`` entry once (a ledger outage for one write)."""
    refused: list[str] = []
    append = service.ledger.append_sync

    def flaky(kind: str, payload: dict[str, Any], **kw: Any) -> Any:
        if kind == "toggle.set" and not refused:
            refused.append(payload["operation"])
            raise LedgerUnavailable("the ledger refused a write")
        return append(kind, payload, **kw)

    monkeypatch.setattr(service.ledger, "append_sync", flaky)
    return refused


def test_rollback_whose_switch_off_failed_is_completed_and_alerted(
    service: RolloutService, engine: Engine, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    alerts: list[RolloutEvent] = []
    service.listeners.append(alerts.append)
    rollout = service.start_rollout(["email-compose"], Plan(), "root")
    clock.advance(600)
    log_calls(engine, clock, "email-compose", 190, 10)  # 5 %
    refused = refuse_next_toggle_write(service, monkeypatch)
    with pytest.raises(LedgerUnavailable):
        service.evaluate(rollout.id)
    assert refused == ["email-compose"]
    assert service.get_rollout(rollout.id).state.state is State.ROLLING_BACK
    assert service.get_toggle("email-compose").enabled is True  # still serving its canary share
    assert [(a.kind, a.severity) for a in alerts] == [("rollout.rolled_back", "P2")]
    clock.advance(60)
    assert service.evaluate(rollout.id).action is Action.HOLD
    assert service.get_toggle("email-compose").enabled is False
    clock.advance(300)
    assert service.evaluate(rollout.id).action is Action.VERIFIED


def test_promotion_whose_percentage_change_failed_is_completed(
    service: RolloutService, engine: Engine, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout = service.start_rollout(["email-classify"], Plan(), "root")
    clock.advance(24 * 3600 + 60)
    log_calls(engine, clock, "email-classify", 300, 0)
    refuse_next_toggle_write(service, monkeypatch)
    with pytest.raises(LedgerUnavailable):
        service.evaluate(rollout.id)
    assert service.get_rollout(rollout.id).state.stage_index == 1
    assert service.get_toggle("email-classify").rollout_percentage == 5
    service.evaluate(rollout.id)
    assert service.get_toggle("email-classify").rollout_percentage == 25


def test_a_toggle_change_the_database_refuses_leaves_no_ledger_entry(
    service: RolloutService, engine: Engine,
) -> None:
    """The row is written in the transaction of its ``toggle.set`` entry: when the write fails,
    the entry is not written either (it used to be appended first, in its own transaction)."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_toggles BEFORE UPDATE ON feature_toggles "
                          "BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    with pytest.raises(LedgerUnavailable):
        service.set_toggle("email-compose", ToggleChange(kill_switch=True), "admin:ada", "incident")
    assert entries(engine, "toggle.set") == []
    assert service.get_toggle("email-compose").kill_switch is False


def test_concurrent_toggle_changes_all_apply_and_each_entry_has_the_state_it_replaced(
    service: RolloutService, engine: Engine,
) -> None:
    """The trial's race: a kill switch and a percentage change in flight together. Each change
    is read, merged and written under the ledger's lock, so neither is lost and the ledger's
    ``before`` of each entry is the ``after`` of the one before it."""
    op = "email-compose"
    for round_ in range(8):
        service.set_toggle(op, ToggleChange(enabled=True, rollout_percentage=100, kill_switch=False),
                           "admin:ada", f"reset {round_}")
        start = threading.Barrier(2)

        def change(toggle_change: ToggleChange, reason: str) -> None:
            start.wait()
            service.set_toggle(op, toggle_change, "admin:ada", reason)

        racers = [threading.Thread(target=change, args=(ToggleChange(kill_switch=True), "incident")),
                  threading.Thread(target=change, args=(ToggleChange(rollout_percentage=50), "tune"))]
        for t in racers:
            t.start()
        for t in racers:
            t.join()
        final = service.get_toggle(op)
        assert (final.kill_switch, final.rollout_percentage) == (True, 50), round_
    chain = [e for e in entries(engine, "toggle.set") if e["operation"] == op]
    assert all(later["before"] == earlier["after"] for earlier, later in zip(chain, chain[1:]))


def test_a_toggle_change_to_what_an_unfinished_rollout_controls_is_refused_with_409(
    service: RolloutService, engine: Engine,
) -> None:
    """Tester A F3: a manual percentage (or enabled) change during a canary used to be applied,
    serving 100 % while the rollout reported stage 1 at 5 % (and the next promotion took it back
    to 25 %). Now it is refused, nothing is written, and the message says how to proceed; fields
    the rollout does not control, and the kill switch, still change."""
    op = "email-compose"
    rollout = service.start_rollout([op], Plan(), "root")
    written = len(entries(engine, "toggle.set"))
    for change in (ToggleChange(rollout_percentage=100), ToggleChange(enabled=False),
                   ToggleChange(enabled=True, rollout_percentage=100, opt_in_required=False)):
        with pytest.raises(RolloutConflict) as refused:
            service.set_toggle(op, change, "admin:ada", "manual")
        assert str(refused.value) == (
            f"rollout {rollout.id} (running) controls enabled and rollout_percentage of {op}: advance it "
            f"(POST /v1/admin/rollouts/{rollout.id}/advance), roll it back "
            f"(POST /v1/admin/rollouts/{rollout.id}/rollback), engage the kill switch, or wait until it has finished")
    assert len(entries(engine, "toggle.set")) == written
    t = service.get_toggle(op)
    assert (t.enabled, t.rollout_percentage, t.opt_in_required) == (True, 5, True)
    service.set_toggle(op, ToggleChange(opt_in_required=False, rollout_percentage=5), "admin:ada", "open it")
    assert service.get_toggle(op).opt_in_required is False
    service.advance(rollout.id, "root")  # the rollout's own stage change goes through
    assert service.get_toggle(op).rollout_percentage == 25
    service.set_toggle(op, ToggleChange(kill_switch=True), "oncall", "page")
    assert service.get_rollout(rollout.id).state.state is State.ROLLING_BACK
    assert service.get_toggle(op).enabled is False
    with pytest.raises(RolloutConflict):  # rolling back: re-enabling would fight the 5-minute check
        service.set_toggle(op, ToggleChange(enabled=True), "admin:ada", "too soon")
    service.set_toggle(op, ToggleChange(kill_switch=False), "oncall", "resolved")
    assert service.get_toggle(op).kill_switch is False


def test_a_rollout_start_racing_a_toggle_change_never_leaves_the_toggle_off_its_stage(
    service: RolloutService, clock: ManualClock,
) -> None:
    """The ownership check reads the rollouts in the toggle change's own ledger transaction: the
    manual change either lands before the start (which then sets the stage) or is refused."""
    op = "task-breakdown"
    for round_ in range(6):
        done, refused = at_once([
            lambda: service.start_rollout([op], Plan(), "root"),
            lambda: service.set_toggle(op, ToggleChange(enabled=True, rollout_percentage=100), "admin:ada", "race"),
        ])
        assert {type(e) for e in refused} <= {RolloutConflict}, round_
        [rollout] = service._rollouts_with([op], {State.RUNNING})
        assert service.get_toggle(op).rollout_percentage == 5, round_
        service.rollback(rollout.id, "next round", "root")
        clock.advance(300)
        assert service.evaluate(rollout.id).action is Action.VERIFIED  # finished: the next start is free


def test_disabling_an_operation_for_budget_enforcement_rolls_its_rollout_back(
    service: RolloutService, engine: Engine, clock: ManualClock,
) -> None:
    """disable_operation (the monitoring worker's reaction to a budget enforcement failure) must
    still switch the operation off during a canary: it rolls the rollout back, as the kill switch
    does, instead of leaving a running rollout with its operation disabled behind its back."""
    rollout = service.start_rollout(["email-classify"], Plan(), "root")
    disable_operation(engine, "email-classify", "budget enforcement failure: x", "monitoring",
                      ledger=service.ledger, clock=clock)
    assert service.get_toggle("email-classify").enabled is False
    assert service.get_rollout(rollout.id).state.state is State.ROLLING_BACK
    assert service.history(rollout.id)[-1]["reason"] == "budget enforcement failure: x"
