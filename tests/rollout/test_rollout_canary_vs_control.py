"""The canary is judged against its control in the same window, and on the most recent window
too: a canary far slower than the control, or a late error spike diluted by a long healthy
stage, is rolled back instead of promoted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opsgate.rollout.controller import (
    Action,
    CohortMetrics,
    Evaluate,
    Plan,
    RolloutState,
    State,
    step,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SERVED = RolloutState(State.RUNNING, 0, NOW - timedelta(hours=24, minutes=1), Plan())
FAST_CONTROL = CohortMetrics(5000, 5, 8.0, 10.0, 900)


def test_canary_100x_slower_than_its_control_is_rolled_back_not_promoted() -> None:
    canary = CohortMetrics(1000, 1, 900.0, 1000.0, 900)  # under the absolute 2 s gates
    decision = step(SERVED, Evaluate(canary, FAST_CONTROL), NOW)
    assert decision.action is Action.ROLLBACK
    assert decision.reason == "canary p99 1000 ms above 2x control's 10 ms"


def test_canary_at_twice_the_control_p99_is_still_promoted() -> None:
    canary = CohortMetrics(1000, 1, 15.0, 20.0, 900)
    assert step(SERVED, Evaluate(canary, FAST_CONTROL), NOW).action is Action.PROMOTE


def test_slow_canary_against_a_control_too_small_to_judge_is_not_compared() -> None:
    canary = CohortMetrics(1000, 1, 900.0, 1000.0, 900)
    decision = step(SERVED, Evaluate(canary, CohortMetrics(99, 0, 8.0, 10.0, 900)), NOW)
    assert decision.action is Action.PROMOTE


def test_late_error_spike_is_not_diluted_by_the_stage_total() -> None:
    stage = CohortMetrics(10_000, 40, 800.0, 1500.0, 900)  # 0.4 % over the whole stage
    recent = CohortMetrics(200, 30, 800.0, 1500.0, 900)  # 15 % in the last hour
    decision = step(SERVED, Evaluate(stage, CohortMetrics(), 0, recent, CohortMetrics()), NOW)
    assert decision.action is Action.ROLLBACK
    assert decision.reason == "canary error rate above 1 % in the most recent window"
    assert step(SERVED, Evaluate(stage, CohortMetrics()), NOW).action is Action.PROMOTE


def test_recent_window_with_too_few_calls_is_not_judged() -> None:
    stage = CohortMetrics(10_000, 40, 800.0, 1500.0, 900)
    recent = CohortMetrics(99, 30, 800.0, 1500.0, 900)
    decision = step(SERVED, Evaluate(stage, CohortMetrics(), 0, recent, CohortMetrics()), NOW)
    assert decision.action is Action.PROMOTE
