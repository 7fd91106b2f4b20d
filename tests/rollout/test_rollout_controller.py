"""The canary state machine: every (state, event) pair, then the paths the issue names."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.rollout.rollout_helpers import DAY, NOW, PLAN, decision_table, state_of

from opsgate.rollout.controller import (
    Action,
    Advance,
    CohortMetrics,
    Evaluate,
    KillSwitch,
    Rollback,
    RolloutState,
    State,
    Thresholds,
    step,
)


def healthy(requests: int = 1000) -> CohortMetrics:
    return CohortMetrics(requests, 2, 800.0, 1500.0, 1200)


CONTROL = CohortMetrics(5000, 10, 700.0, 1400.0, 900)
EVENTS = {
    "healthy": Evaluate(healthy(), CONTROL),
    "zero_traffic": Evaluate(CohortMetrics(), CONTROL),
    "few_requests_all_failing": Evaluate(CohortMetrics(50, 50, 900.0, 1900.0, 0), CONTROL),
    "error_rate_2pct": Evaluate(CohortMetrics(1000, 20, 800.0, 1500.0, 1200), CONTROL),
    "error_rate_0_7pct": Evaluate(CohortMetrics(1000, 7, 800.0, 1500.0, 1200), CONTROL),
    "p99_2_5s": Evaluate(CohortMetrics(1000, 1, 900.0, 2500.0, 1200), CONTROL),
    "avg_2s": Evaluate(CohortMetrics(1000, 1, 2000.0, 1999.0, 1200), CONTROL),
    "open_p1": Evaluate(healthy(), CONTROL, open_p1=1),
    "outage": Evaluate(CohortMetrics(1000, 280, 900.0, 1900.0, 0), CohortMetrics(4000, 1200, 900.0, 1900.0, 0)),
    "advance": Advance(),
    "rollback": Rollback("operator says so"),
    "kill_switch": KillSwitch("email-compose"),
}


ACTIVE_ROWS = {
    # event: (action, state after, stage index after) for running / awaiting_promotion / paused
    "healthy": (Action.PROMOTE, State.RUNNING, 1),
    "zero_traffic": (Action.HOLD, State.AWAITING_PROMOTION, 0),
    "few_requests_all_failing": (Action.HOLD, State.AWAITING_PROMOTION, 0),
    "error_rate_2pct": (Action.ROLLBACK, State.ROLLING_BACK, 0),
    "error_rate_0_7pct": (Action.HOLD, State.AWAITING_PROMOTION, 0),
    "p99_2_5s": (Action.HOLD, State.AWAITING_PROMOTION, 0),
    "avg_2s": (Action.HOLD, State.AWAITING_PROMOTION, 0),
    "open_p1": (Action.ROLLBACK, State.ROLLING_BACK, 0),
    "outage": (Action.PAUSE, State.PAUSED, 0),
    "advance": (Action.PROMOTE, State.RUNNING, 1),
    "rollback": (Action.ROLLBACK, State.ROLLING_BACK, 0),
    "kill_switch": (Action.ROLLBACK, State.ROLLING_BACK, 0),
}
OBSERVING_ROWS = {
    **{e: (a, s, 3) for e, (a, s, _) in ACTIVE_ROWS.items()},
    "healthy": (Action.COMPLETE, State.COMPLETED, 3),
    "advance": (Action.COMPLETE, State.COMPLETED, 3),
}
TABLE = decision_table(EVENTS, ACTIVE_ROWS, OBSERVING_ROWS)
PAIRS = [(s, e) for s in State for e in EVENTS]


def test_rollout_table_covers_every_state_and_event() -> None:
    assert set(TABLE) == set(State)
    assert all(set(rows) == set(EVENTS) for rows in TABLE.values())
    assert len(PAIRS) == 8 * 12


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s}-{e}" for s, e in PAIRS])
def test_rollout_state_event_pair(state: State, event: str) -> None:
    action, after, stage = TABLE[state][event]
    decision = step(state_of(state), EVENTS[event], NOW)
    assert (decision.action, decision.after.state, decision.after.stage_index) == (action, after, stage)
    assert decision.disable is (action is Action.ROLLBACK)
    assert decision.alert == {Action.ROLLBACK: "P2", Action.ESCALATE: "P1"}.get(action)
    if action is Action.PROMOTE:
        assert decision.percentage == 25
        assert decision.after.stage_started_at == NOW
    else:
        assert decision.percentage is None
    if action is Action.ROLLBACK:
        assert decision.after.check_due_at == NOW + timedelta(minutes=5)
    assert all(type(v) is int for v in decision.numbers.values())


def test_rollout_zero_traffic_never_rolls_back_even_for_days() -> None:
    state = RolloutState(State.RUNNING, 0, NOW - timedelta(days=30), PLAN)
    decision = step(state, EVENTS["zero_traffic"], NOW)
    assert decision.action is Action.HOLD
    assert "too few canary requests (0 < 100)" in decision.reason


def test_rollout_threshold_crossed_while_paused_rolls_back() -> None:
    paused = state_of("paused")
    decision = step(paused, EVENTS["error_rate_2pct"], NOW)
    assert decision.action is Action.ROLLBACK
    assert decision.reason == "canary error rate above 1 %"
    assert decision.after.paused_since is None


def test_rollout_threshold_crossed_while_awaiting_promotion_rolls_back() -> None:
    waiting = step(state_of("running"), EVENTS["error_rate_0_7pct"], NOW).after
    assert waiting.state is State.AWAITING_PROMOTION
    decision = step(waiting, EVENTS["error_rate_2pct"], NOW + timedelta(minutes=5))
    assert decision.action is Action.ROLLBACK


def test_rollout_kill_switch_during_a_hold_rolls_back() -> None:
    held = step(state_of("running"), EVENTS["few_requests_all_failing"], NOW)
    assert held.action is Action.HOLD
    decision = step(held.after, KillSwitch("email-compose"), NOW + timedelta(minutes=1))
    assert decision.action is Action.ROLLBACK
    assert decision.reason == "kill switch engaged on email-compose"


def test_rollout_rollback_verified_when_errors_drop() -> None:
    rolled = step(state_of("running"), EVENTS["error_rate_2pct"], NOW).after
    later = NOW + timedelta(minutes=5)
    decision = step(rolled, Evaluate(CohortMetrics(), CONTROL), later)
    assert (decision.action, decision.after.state, decision.alert) == (Action.VERIFIED, State.ROLLED_BACK, None)


def test_rollout_rollback_whose_error_rate_does_not_drop_escalates_to_p1() -> None:
    rolled = step(state_of("running"), EVENTS["error_rate_2pct"], NOW).after
    early = step(rolled, EVENTS["error_rate_2pct"], NOW + timedelta(minutes=4, seconds=59))
    assert early.action is Action.HOLD
    decision = step(rolled, EVENTS["error_rate_2pct"], NOW + timedelta(minutes=5))
    assert (decision.action, decision.after.state, decision.alert) == (Action.ESCALATE, State.ESCALATED, "P1")
    assert decision.numbers["canary_error_ppm"] == 20_000


def test_rollout_paused_time_does_not_count_as_stage_time() -> None:
    start = NOW - DAY - timedelta(minutes=1)
    paused_for_hour = RolloutState(State.RUNNING, 0, start, PLAN, paused_s=3600)
    decision = step(paused_for_hour, EVENTS["healthy"], NOW)
    assert decision.action is Action.HOLD
    assert decision.reason == "stage time not served"
    assert decision.numbers["stage_served_s"] == 24 * 3600 + 60 - 3600


def test_rollout_outage_pause_then_resume_accumulates_paused_seconds() -> None:
    running = RolloutState(State.RUNNING, 0, NOW - timedelta(hours=1), PLAN)
    paused = step(running, EVENTS["outage"], NOW).after
    assert paused.paused_since == NOW
    still = step(paused, EVENTS["outage"], NOW + timedelta(minutes=20)).after
    assert still.paused_since == NOW
    resumed = step(still, EVENTS["healthy"], NOW + timedelta(minutes=40))
    assert (resumed.action, resumed.after.state) == (Action.HOLD, State.RUNNING)
    assert (resumed.after.paused_s, resumed.after.paused_since) == (2400, None)


def test_rollout_outage_with_a_worse_canary_is_a_bad_release() -> None:
    control = CohortMetrics(4000, 80, 900.0, 1900.0, 0)  # 2 %
    canary = CohortMetrics(1000, 40, 900.0, 1900.0, 0)  # 4 %: more than 1 point worse
    assert step(state_of("running"), Evaluate(canary, control), NOW).action is Action.ROLLBACK


def test_rollout_healthy_walk_through_the_seed_plan() -> None:
    state, now, percentages = RolloutState(State.RUNNING, 0, NOW, PLAN), NOW, []
    for hours, expected in [(24, Action.PROMOTE), (12, Action.PROMOTE), (12, Action.PROMOTE), (48, Action.COMPLETE)]:
        early = step(state, EVENTS["healthy"], now + timedelta(hours=hours) - timedelta(seconds=1))
        assert early.action is Action.HOLD
        now += timedelta(hours=hours)
        decision = step(state, EVENTS["healthy"], now)
        assert decision.action is expected
        percentages.append(decision.percentage)
        state = decision.after
    assert percentages == [25, 100, 100, None]
    assert state.state is State.COMPLETED


def test_rollout_thresholds_are_exact_at_the_boundaries() -> None:
    at_1pct = Evaluate(CohortMetrics(1000, 10, 800.0, 1500.0, 0), CONTROL)
    assert step(state_of("running"), at_1pct, NOW).action is Action.HOLD  # > 1 % rolls back, = does not
    at_half = Evaluate(CohortMetrics(1000, 5, 800.0, 1500.0, 0), CONTROL)
    assert step(state_of("running"), at_half, NOW).action is Action.HOLD  # < 0.5 % promotes, = does not
    below = Evaluate(CohortMetrics(1000, 4, 1999.9, 1999.9, 0), CONTROL)
    assert step(state_of("running"), below, NOW).action is Action.PROMOTE
    strict = Thresholds(min_requests=2000)
    assert step(state_of("running"), EVENTS["error_rate_2pct"], NOW, strict).action is Action.HOLD
