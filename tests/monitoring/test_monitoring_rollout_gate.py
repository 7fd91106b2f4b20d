"""The canary's P1 gate is scoped to the rollout: only unresolved P1 incidents that concern its
operations (or the rollout itself) roll it back (tester-ops F3: any P1 anywhere rolled back
every rollout, switching a fully-on operation off for everyone)."""

from __future__ import annotations

import pytest
from tests.monitoring.worker_env import Env

from opsgate.monitoring.incidents import concerns
from opsgate.monitoring.rules import Finding, Severity
from opsgate.monitoring.worker import Worker
from opsgate.rollout.controller import Plan, Stage, State

PLAN = Plan((Stage(5, 3600),), 3600)


def _p1(worker: Worker, rule: str, labels: dict[str, str]) -> str:
    incident = worker.incidents.observe(Finding(rule, labels, True, Severity.P1, "35%", "t", "s"))
    assert incident is not None
    return incident


def _rollout_state(worker: Worker, rollout_id: int) -> State:
    return worker.rollout.get_rollout(rollout_id).state.state


async def test_a_p1_about_another_operation_leaves_the_rollout_running(env: Env) -> None:
    worker = env.worker()
    worker.rollout.ensure_toggles(["email-classify", "task-breakdown"])
    _p1(worker, "error_rate", {"operation": "email-classify"})
    _p1(worker, "cost_discrepancy", {"provider": "gemini"})
    rollout = worker.rollout.start_rollout(["task-breakdown"], PLAN, "test")
    worker.evaluate_canary()
    assert _rollout_state(worker, rollout.id) is State.RUNNING
    assert worker.rollout.get_toggle("task-breakdown").enabled
    assert worker.rollout.history(rollout.id)[-1]["numbers"]["open_p1"] == 0


async def test_an_acknowledged_p1_about_its_operation_rolls_the_rollout_back(env: Env) -> None:
    worker = env.worker()
    worker.rollout.ensure_toggles(["email-classify", "task-breakdown"])
    rollout = worker.rollout.start_rollout(["task-breakdown"], PLAN, "test")
    worker.incidents.acknowledge(_p1(worker, "error_rate", {"operation": "task-breakdown"}), "operator-1")
    worker.evaluate_canary()
    assert _rollout_state(worker, rollout.id) is State.ROLLING_BACK
    assert worker.rollout.history(rollout.id)[-1]["reason"] == "1 open P1 incident(s)"


@pytest.mark.parametrize(("labels", "expected"), [
    ({"operation": "task-breakdown"}, True),
    ({"operation": "*"}, True),  # a budget enforcement failure tied to no operation
    ({"target": "task-breakdown anthropic/claude-sonnet-4-5"}, True),
    ({"rollout": "7", "event": "rollout.escalated"}, True),
    ({"operation": "email-classify"}, False),
    ({"target": "email-classify anthropic/claude-sonnet-4-5"}, False),
    ({"rollout": "8", "event": "rollout.escalated"}, False),
    ({"provider": "anthropic"}, False),
    ({}, False),  # the ledger
])
def test_which_incidents_concern_a_rollout(labels: dict[str, str], expected: bool) -> None:
    assert concerns(labels, ("task-breakdown",), 7) is expected


async def test_a_budget_enforcement_failure_that_rolls_a_rollout_back_alerts(env: Env) -> None:
    """The worker disables the operation through its own rollout service, whose alert events
    are attached: the rollback it causes opens its rollout.rolled_back incident too."""
    from opsgate.monitoring.health import ENFORCEMENT_FAILURE
    from opsgate.monitoring.hooks import record_signal

    worker = env.worker()
    worker.rollout.ensure_toggles(["task-breakdown"])
    rollout = worker.rollout.start_rollout(["task-breakdown"], PLAN, "test")
    record_signal(env.engine, env.clock, ENFORCEMENT_FAILURE, "task-breakdown", ok=False, severity="P1",
                  detail="reserve failed: x")
    assert worker.handle_signals() == 1  # the enforcement failure: disables, rolls back
    assert _rollout_state(worker, rollout.id) is State.ROLLING_BACK
    assert worker.handle_signals() == 1  # the rollback's own alert
    titles = sorted(i["title"] for i in worker.incidents.list())
    assert titles == ["Budget enforcement failure (task-breakdown)", f"Rollout {rollout.id}: rollout.rolled_back"]
