"""The canary state machine for variant rollouts (``Evaluate.relative``): every (state, event) pair,
the candidate judged against the live variant's calls in the same window on error rate, p99, cost
per call, schema-repair rate and refusal rate, with the minimum-sample rule."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from tests.rollout.rollout_helpers import NOW, decision_table, state_of

from opsgate.config import Settings
from opsgate.rollout.controller import (
    Action,
    Advance,
    CohortMetrics,
    Evaluate,
    KillSwitch,
    Rollback,
    State,
    Thresholds,
    step,
)

LIVE = CohortMetrics(4000, 8, 700.0, 1400.0, 1000, repaired=40, refused=8)  # 1 % repaired, 0.2 % refused


def candidate(**changes: object) -> CohortMetrics:
    """A healthy candidate: 1,000 calls, 0.2 % errors, p99 1.5 s, cost like the live variant's."""
    return replace(CohortMetrics(1000, 2, 800.0, 1500.0, 1000, repaired=10, refused=2), **changes)  # type: ignore[arg-type]


def relative(canary: CohortMetrics, control: CohortMetrics = LIVE) -> Evaluate:
    return Evaluate(canary, control, relative=True)


EVENTS = {
    "healthy": relative(candidate()),
    "costs_1_4x_otherwise_healthy": relative(candidate(cost_per_request_micro_usd=1400)),
    "costs_3x_otherwise_healthy": relative(candidate(cost_per_request_micro_usd=3000)),
    "too_few_calls_to_judge": relative(candidate(requests=99, errors=20, cost_per_request_micro_usd=9000)),
    "too_few_control_calls": relative(candidate(cost_per_request_micro_usd=3000, repaired=300),
                                      replace(LIVE, requests=99, repaired=1)),
    "p99_2_1x": relative(candidate(p99_latency_ms=1999.0), replace(LIVE, p99_latency_ms=950.0)),
    "error_rate_2pct": relative(candidate(errors=20)),
    "repair_rate_8pct": relative(candidate(repaired=80)),
    "repair_rate_5pct": relative(candidate(repaired=60)),  # exactly 5 points above the live 1 %
    "refusal_rate_6pct": relative(candidate(refused=60)),
    "open_p1": Evaluate(candidate(), LIVE, open_p1=1, relative=True),
    "advance": Advance(),
    "rollback": Rollback("operator says so"),
    "kill_switch": KillSwitch("email-classify"),
}
ACTIVE_ROWS = {
    "healthy": (Action.PROMOTE, State.RUNNING, 1),
    "costs_1_4x_otherwise_healthy": (Action.PROMOTE, State.RUNNING, 1),
    "costs_3x_otherwise_healthy": (Action.ROLLBACK, State.ROLLING_BACK, 0),
    "too_few_calls_to_judge": (Action.HOLD, State.AWAITING_PROMOTION, 0),
    "too_few_control_calls": (Action.PROMOTE, State.RUNNING, 1),
    "p99_2_1x": (Action.ROLLBACK, State.ROLLING_BACK, 0),
    "error_rate_2pct": (Action.ROLLBACK, State.ROLLING_BACK, 0),
    "repair_rate_8pct": (Action.HOLD, State.AWAITING_PROMOTION, 0),
    "repair_rate_5pct": (Action.PROMOTE, State.RUNNING, 1),
    "refusal_rate_6pct": (Action.HOLD, State.AWAITING_PROMOTION, 0),
    "open_p1": (Action.ROLLBACK, State.ROLLING_BACK, 0),
    "advance": (Action.PROMOTE, State.RUNNING, 1),
    "rollback": (Action.ROLLBACK, State.ROLLING_BACK, 0),
    "kill_switch": (Action.ROLLBACK, State.ROLLING_BACK, 0),
}
OBSERVING_ROWS = {
    **{e: (a, s, 3) for e, (a, s, _) in ACTIVE_ROWS.items()},
    **{e: (Action.COMPLETE, State.COMPLETED, 3) for e, (a, _, _) in ACTIVE_ROWS.items() if a is Action.PROMOTE},
}
TABLE = decision_table(EVENTS, ACTIVE_ROWS, OBSERVING_ROWS)
PAIRS = [(s, e) for s in State for e in EVENTS]


def test_variant_table_covers_every_state_and_event() -> None:
    assert set(TABLE) == set(State) and all(set(rows) == set(EVENTS) for rows in TABLE.values())
    assert len(PAIRS) == 8 * 14


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s}-{e}" for s, e in PAIRS])
def test_variant_state_event_pair(state: State, event: str) -> None:
    action, after, stage = TABLE[state][event]
    decision = step(state_of(state), EVENTS[event], NOW)
    assert (decision.action, decision.after.state, decision.after.stage_index) == (action, after, stage)
    assert decision.disable is (action is Action.ROLLBACK)
    assert decision.alert == {Action.ROLLBACK: "P2", Action.ESCALATE: "P1"}.get(action)
    assert all(type(v) is int for v in decision.numbers.values())


def test_the_reasons_name_the_metric_and_its_threshold() -> None:
    running = state_of("running")
    assert step(running, EVENTS["costs_3x_otherwise_healthy"], NOW).reason == (
        "canary cost per call 3000 micro-USD above 1.5x control's 1000")
    assert step(running, EVENTS["repair_rate_8pct"], NOW).reason == (
        "schema-repair rate more than 5 points above control's")
    assert step(running, EVENTS["refusal_rate_6pct"], NOW).reason == "refusal rate more than 5 points above control's"
    assert step(running, EVENTS["too_few_calls_to_judge"], NOW).reason == "too few canary requests (99 < 100)"
    numbers = step(running, EVENTS["repair_rate_8pct"], NOW).numbers
    assert (numbers["canary_repaired"], numbers["control_repaired"], numbers["canary_refused"]) == (80, 40, 2)


def test_a_toggle_rollout_never_compares_cost_repairs_or_refusals() -> None:
    absolute = Evaluate(candidate(cost_per_request_micro_usd=3000, repaired=300, refused=300), LIVE)
    assert step(state_of("running"), absolute, NOW).action is Action.PROMOTE


def test_a_late_cost_spike_in_the_most_recent_window_rolls_back() -> None:
    late = Evaluate(candidate(), LIVE, recent_canary=candidate(cost_per_request_micro_usd=1600),
                    recent_control=LIVE, relative=True)
    decision = step(state_of("running"), late, NOW)
    assert (decision.action, decision.reason) == (
        Action.ROLLBACK, "canary cost per call 1600 micro-USD above 1.5x control's 1000 in the most recent window")


def test_thresholds_come_from_configuration_with_the_issues_defaults(tmp_path: Path) -> None:
    defaults = Thresholds.from_settings(Settings(config=tmp_path / "absent.toml"))
    assert (defaults.rollback_error_bp, defaults.max_p99_ratio, defaults.max_cost_ratio, defaults.max_repair_bp,
            defaults.max_refusal_bp, defaults.min_requests) == (100, 2.0, 1.5, 500, 500, 100)
    strict = Thresholds.from_settings(Settings(config=tmp_path / "absent.toml", canary_max_cost_ratio=1.2,
                                               canary_max_repair_points=Decimal("0.5"), canary_min_requests=50))
    assert (strict.max_cost_ratio, strict.max_repair_bp, strict.min_requests) == (1.2, 50, 50)
    assert step(state_of("running"), EVENTS["costs_1_4x_otherwise_healthy"], NOW, strict).action is Action.ROLLBACK
