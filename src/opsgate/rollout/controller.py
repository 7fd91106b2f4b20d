"""The canary controller: a pure state machine over an injected time and metrics snapshots.

:func:`step` maps (:class:`RolloutState`, event, now) to a :class:`Decision`; it reads no clock and
touches no database, so every (state, event) pair is unit tested. The service applies decisions.

States: ``running`` (a stage whose time is not served yet), ``awaiting_promotion`` (time served, the
promotion gates not met yet), ``paused`` (a provider outage hits canary and control alike; the stage
clock stops), ``observing`` (the observation after the last stage, at 100 %), ``rolling_back``
(operations disabled; the 5-minute check that the error rate dropped is pending), and the terminal
``rolled_back``, ``escalated`` and ``completed``.

Evaluation outcomes (seed Phase 8 deployment plan; thresholds in :class:`Thresholds`):

- roll back: an open P1 incident, or the canary's error rate > 1 % with at least ``min_requests``
  requests (unless it is a provider outage, below);
- hold (``paused``): the control cohort has ``min_requests`` and an error rate > 1 %, and the
  canary's error rate is at most 1 point above the control's (the fault is the provider's, not the
  release's);
- hold: fewer than ``min_requests`` canary requests (zero traffic never rolls back), the stage time not
  yet served, or the promotion gates not met;
- promote: stage time served (excluding paused time), error rate < 0.5 %, average latency < 2 s,
  p99 < 2 s and no open P1. Promoting from the last stage enters ``observing``; a served, healthy
  observation completes the rollout.

A variant rollout (:attr:`Evaluate.relative`) also judges the candidate against the live variant's
calls in the same window, when both have ``min_requests``: cost per call above
``max_cost_ratio`` × the control's rolls back; a schema-repair rate or a refusal rate more than
``max_repair_bp`` / ``max_refusal_bp`` above the control's holds (the promotion waits).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from opsgate.config import Settings


class State(StrEnum):
    """Rollout states (see the module docstring)."""

    RUNNING = "running"
    AWAITING_PROMOTION = "awaiting_promotion"
    PAUSED = "paused"
    OBSERVING = "observing"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ESCALATED = "escalated"
    COMPLETED = "completed"


ACTIVE = frozenset({State.RUNNING, State.AWAITING_PROMOTION, State.PAUSED, State.OBSERVING})
TERMINAL = frozenset({State.ROLLED_BACK, State.ESCALATED, State.COMPLETED})


class Action(StrEnum):
    """What a decision does."""

    PROMOTE = "promote"
    HOLD = "hold"
    PAUSE = "pause"
    ROLLBACK = "rollback"
    COMPLETE = "complete"
    VERIFIED = "verified"
    ESCALATE = "escalate"
    IGNORE = "ignore"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Stage:
    """One plan stage: ``percentage`` of users (1..100) for ``seconds`` (> 0)."""

    percentage: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Stages, then an observation at 100 % for ``observation_s`` seconds. Default: the seed's
    5 %/24 h, 25 %/12 h, 100 %/12 h, then 48 h of observation."""

    stages: tuple[Stage, ...] = (Stage(5, 24 * 3600), Stage(25, 12 * 3600), Stage(100, 12 * 3600))
    observation_s: int = 48 * 3600

    def duration_s(self, stage_index: int) -> int:
        """Seconds of stage ``stage_index``; ``len(stages)`` is the observation."""
        if stage_index >= len(self.stages):
            return self.observation_s
        return self.stages[stage_index].seconds

    def percentage(self, stage_index: int) -> int:
        """The rollout percentage of ``stage_index`` (100 during the observation)."""
        return self.stages[stage_index].percentage if stage_index < len(self.stages) else 100

    def stage_label(self, stage_index: int) -> str:
        """How the CLI and the dashboard name ``stage_index``: ``"N/M"`` counting from 1 over the
        plan's ``M`` stages, or ``"observation"`` after the last one."""
        if stage_index >= len(self.stages):
            return "observation"
        return f"{stage_index + 1}/{len(self.stages)}"

    def to_dict(self) -> dict[str, object]:
        """JSON shape (integers only): ``{"stages": [{"percentage", "seconds"}], "observation_s"}``."""
        return {"stages": [{"percentage": s.percentage, "seconds": s.seconds} for s in self.stages],
                "observation_s": self.observation_s}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Decision thresholds. Error rates in basis points (1 bp = 0.01 %), latency in ms.

    A rollback is verified ``verify_after_s`` after it happened, on the rollout's operations over
    the last ``verify_window_s`` (so calls already in flight at the rollback do not count).

    Canary against control, in the same window: a canary p99 above ``max_p99_ratio`` times the
    control's rolls back (errors are compared with the control by the outage rule: both failing
    alike pauses instead). ``recent_window_s`` is the most recent window, judged on its own so that a late
    spike is not diluted by a long healthy stage.

    Variant rollouts only (relative to the live variant): ``max_cost_ratio`` (cost per call,
    rollback), ``max_repair_bp`` and ``max_refusal_bp`` (points above the control's rate, hold)."""

    promote_max_error_bp: int = 50
    rollback_error_bp: int = 100
    max_avg_latency_ms: float = 2000.0
    max_p99_latency_ms: float = 2000.0
    min_requests: int = 100
    outage_margin_bp: int = 100
    verify_after_s: int = 300
    verify_window_s: int = 60
    recent_window_s: int = 3600
    max_p99_ratio: float = 2.0
    max_cost_ratio: float = 1.5
    max_repair_bp: int = 500
    max_refusal_bp: int = 500

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        """The ``canary_*`` thresholds of ``settings`` (percentages and points to basis points)."""
        return cls(rollback_error_bp=_bp(settings.canary_rollback_error_pct),
                   min_requests=settings.canary_min_requests, max_p99_ratio=settings.canary_max_p99_ratio,
                   max_cost_ratio=settings.canary_max_cost_ratio,
                   max_repair_bp=_bp(settings.canary_max_repair_points),
                   max_refusal_bp=_bp(settings.canary_max_refusal_points))


def _bp(percent: Decimal) -> int:
    return int(percent * 100)


@dataclass(frozen=True, slots=True)
class CohortMetrics:
    """One cohort over a window: requests and errors (counts), average and p99 latency (ms, p99 by
    nearest rank), cost per request (integer micro-USD, floor), and the calls whose answer needed
    the schema repair request (``repaired``) or that a provider refused on content policy
    (``refused``)."""

    requests: int = 0
    errors: int = 0
    avg_latency_ms: float = 0.0
    p99_latency_ms: float = 0.0
    cost_per_request_micro_usd: int = 0
    repaired: int = 0
    refused: int = 0

    def rate_bp_above(self, count: int, other: CohortMetrics, other_count: int, bp: int) -> bool:
        """True when count / requests > other_count / other.requests + bp / 10 000 (integers)."""
        return count * 10_000 * other.requests > (other_count * 10_000 + bp * other.requests) * self.requests

    def p99_above(self, other: CohortMetrics, ratio: float) -> bool:
        """True when this p99 latency > ``ratio`` x ``other``'s (the canary-vs-control latency rule)."""
        return self.p99_latency_ms > ratio * other.p99_latency_ms

    def cost_above(self, other: CohortMetrics, ratio: float) -> bool:
        """True when this cost per request > ``ratio`` x ``other``'s (the variant cost rule)."""
        return self.cost_per_request_micro_usd > ratio * other.cost_per_request_micro_usd

    def error_bp_exceeds(self, bp: int) -> bool:
        """True when errors / requests > bp / 10 000 (exact integer arithmetic)."""
        return self.errors * 10_000 > bp * self.requests

    def error_bp_below(self, bp: int) -> bool:
        """True when errors / requests < bp / 10 000."""
        return self.errors * 10_000 < bp * self.requests

    def error_ppm(self) -> int:
        """The error rate in parts per million (0 without requests)."""
        return self.rate_ppm(self.errors)

    @classmethod
    def from_numbers(cls, numbers: dict[str, int], prefix: str) -> CohortMetrics:
        """The cohort back from a decision's :meth:`numbers` under ``prefix`` (missing keys: 0;
        latencies to the microsecond)."""
        def get(name: str) -> int:
            return int(numbers.get(f"{prefix}_{name}", 0))

        return cls(requests=get("requests"), errors=get("errors"), avg_latency_ms=get("avg_latency_us") / 1000,
                   p99_latency_ms=get("p99_latency_us") / 1000,
                   cost_per_request_micro_usd=get("cost_per_request_micro_usd"),
                   repaired=get("repaired"), refused=get("refused"))

    def rate_ppm(self, count: int) -> int:
        """``count`` per request in parts per million (0 without requests)."""
        return count * 1_000_000 // self.requests if self.requests else 0

    def numbers(self, prefix: str) -> dict[str, int]:
        """Integer fields for the ledger: counts, error ppm, latencies in microseconds, cost."""
        return {
            f"{prefix}_requests": self.requests,
            f"{prefix}_errors": self.errors,
            f"{prefix}_error_ppm": self.error_ppm(),
            f"{prefix}_avg_latency_us": round(self.avg_latency_ms * 1000),
            f"{prefix}_p99_latency_us": round(self.p99_latency_ms * 1000),
            f"{prefix}_cost_per_request_micro_usd": self.cost_per_request_micro_usd,
            f"{prefix}_repaired": self.repaired,
            f"{prefix}_refused": self.refused,
        }


@dataclass(frozen=True, slots=True)
class RolloutState:
    """What the controller needs to know about one rollout (a ``rollouts`` row)."""

    state: State
    stage_index: int
    stage_started_at: datetime
    plan: Plan = field(default_factory=Plan)
    paused_since: datetime | None = None
    paused_s: int = 0
    check_due_at: datetime | None = None

    def served_s(self, now: datetime) -> float:
        """Seconds of the current stage served so far, excluding paused time."""
        paused = self.paused_s + (int((now - self.paused_since).total_seconds())
                                  if self.paused_since else 0)
        return (now - self.stage_started_at).total_seconds() - paused


@dataclass(frozen=True, slots=True)
class Evaluate:
    """A periodic evaluation: the canary and control cohorts over the stage window and over the
    most recent window (``Thresholds.recent_window_s``), open P1s. In ``rolling_back`` the canary
    is the rollout's operations since the rollback. ``relative``: a variant rollout, whose control
    is the same operation's live variant, so cost, repairs and refusals are compared too."""

    canary: CohortMetrics
    control: CohortMetrics
    open_p1: int = 0
    recent_canary: CohortMetrics = CohortMetrics()
    recent_control: CohortMetrics = CohortMetrics()
    relative: bool = False
    name = "evaluate"


@dataclass(frozen=True, slots=True)
class Advance:
    """An operator promotes the rollout now, whatever the metrics say."""

    name = "advance"


@dataclass(frozen=True, slots=True)
class Rollback:
    """An operator (or another system) rolls the rollout back for ``reason``."""

    reason: str
    name = "rollback"


@dataclass(frozen=True, slots=True)
class KillSwitch:
    """The kill switch of one of the rollout's operations was engaged."""

    operation: str
    name = "kill_switch"


Event = Evaluate | Advance | Rollback | KillSwitch


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one step: the new state, what to do, why, and the numbers behind it.

    ``percentage`` is the rollout percentage to set (None: unchanged); ``disable`` turns the
    rollout's operations off; ``alert`` is a severity (``P1``/``P2``) to notify, or None.
    ``recorded`` False: nothing to audit (the wait for a rollback's verification, which the
    rollback's own entry already implies and whose numbers decide nothing), so the service writes
    it neither to the ledger nor to the history.
    """

    action: Action
    after: RolloutState
    reason: str
    numbers: dict[str, int]
    percentage: int | None = None
    disable: bool = False
    alert: str | None = None
    recorded: bool = True


def step(state: RolloutState, event: Event, now: datetime, limits: Thresholds = Thresholds()) -> Decision:
    """Decide what ``event`` at ``now`` does to ``state``."""
    numbers = _numbers(state, event, now)
    if isinstance(event, Evaluate):
        return _evaluate(state, event, now, limits, numbers)
    if isinstance(event, Advance):
        if state.state not in ACTIVE:
            return Decision(Action.REJECT, state, f"a {state.state} rollout cannot advance", numbers)
        return _promote(state, now, "advanced by an operator", numbers)
    if isinstance(event, KillSwitch):
        if state.state not in ACTIVE:
            return Decision(Action.IGNORE, state, f"kill switch on {event.operation}; rollout {state.state}", numbers)
        return _rollback(state, now, limits, f"kill switch engaged on {event.operation}", numbers)
    if state.state in ACTIVE or state.state is State.COMPLETED:
        return _rollback(state, now, limits, event.reason, numbers)
    return Decision(Action.IGNORE, state, f"already {state.state}", numbers)


def _evaluate(state: RolloutState, ev: Evaluate, now: datetime, limits: Thresholds,
              numbers: dict[str, int]) -> Decision:
    if state.state is State.ROLLING_BACK:
        return _verify(state, ev, now, limits, numbers)
    if state.state not in ACTIVE:
        return Decision(Action.IGNORE, state, f"rollout {state.state}", numbers)
    if ev.open_p1:
        return _rollback(state, now, limits, f"{ev.open_p1} open P1 incident(s)", numbers)
    if _outage(ev, limits):
        paused = replace(state, state=State.PAUSED, paused_since=state.paused_since or now)
        return Decision(Action.PAUSE, paused, "provider outage hits canary and control alike", numbers)
    if why := _rollback_reason(ev, limits):
        return _rollback(state, now, limits, why, numbers)
    state = _resume(state, now)
    served = state.served_s(now) >= state.plan.duration_s(state.stage_index)
    gates = _gate_failures(ev, limits)
    if served and not gates:
        return _promote(state, now, "stage served and healthy", numbers)
    held = state.state
    if served:
        held = State.AWAITING_PROMOTION
    why = "stage time not served" if not served else "; ".join(gates)
    if not served and gates:
        why += "; " + "; ".join(gates)
    return Decision(Action.HOLD, replace(state, state=held), why, numbers)


def _rollback_reason(ev: Evaluate, limits: Thresholds) -> str | None:
    """Why the canary must be rolled back now, judged on the stage window and on the most recent
    window alike, or None."""
    for canary, control, window in ((ev.canary, ev.control, ""),
                                    (ev.recent_canary, ev.recent_control, " in the most recent window")):
        if canary.requests < limits.min_requests:
            continue
        if canary.error_bp_exceeds(limits.rollback_error_bp):
            return "canary error rate above 1 %" + window
        if control.requests >= limits.min_requests and canary.p99_above(control, limits.max_p99_ratio):
            return (f"canary p99 {canary.p99_latency_ms:.0f} ms above {limits.max_p99_ratio:g}x "
                    f"control's {control.p99_latency_ms:.0f} ms" + window)
        if ev.relative and control.requests >= limits.min_requests and canary.cost_above(control, limits.max_cost_ratio):
            return (f"canary cost per call {canary.cost_per_request_micro_usd} micro-USD above "
                    f"{limits.max_cost_ratio:g}x control's {control.cost_per_request_micro_usd}" + window)
    return None


def _gate_failures(ev: Evaluate, limits: Thresholds) -> list[str]:
    c = ev.canary
    failures = []
    if c.requests < limits.min_requests:
        failures.append(f"too few canary requests ({c.requests} < {limits.min_requests})")
        return failures
    if not c.error_bp_below(limits.promote_max_error_bp):
        failures.append("error rate not below 0.5 %")
    if c.avg_latency_ms >= limits.max_avg_latency_ms:
        failures.append("average latency not below 2 s")
    if c.p99_latency_ms >= limits.max_p99_latency_ms:
        failures.append("p99 latency not below 2 s")
    if ev.relative and ev.control.requests >= limits.min_requests:
        failures += _relative_failures(c, ev.control, limits)
    return failures


def _relative_failures(c: CohortMetrics, control: CohortMetrics, limits: Thresholds) -> list[str]:
    failures = []
    if c.rate_bp_above(c.repaired, control, control.repaired, limits.max_repair_bp):
        failures.append(f"schema-repair rate more than {limits.max_repair_bp / 100:g} points above control's")
    if c.rate_bp_above(c.refused, control, control.refused, limits.max_refusal_bp):
        failures.append(f"refusal rate more than {limits.max_refusal_bp / 100:g} points above control's")
    return failures


def _outage(ev: Evaluate, limits: Thresholds) -> bool:
    control, canary = ev.control, ev.canary
    if control.requests < limits.min_requests or not control.error_bp_exceeds(limits.rollback_error_bp):
        return False
    # canary rate <= control rate + margin, cross-multiplied to stay in integers
    return (canary.errors * 10_000 * control.requests
            <= (control.errors * 10_000 + limits.outage_margin_bp * control.requests) * canary.requests)


def _resume(state: RolloutState, now: datetime) -> RolloutState:
    if state.state is not State.PAUSED:
        return state
    paused = int((now - state.paused_since).total_seconds()) if state.paused_since else 0
    observing = state.stage_index >= len(state.plan.stages)
    return replace(state, state=State.OBSERVING if observing else State.RUNNING,
                   paused_since=None, paused_s=state.paused_s + paused)


def _promote(state: RolloutState, now: datetime, why: str, numbers: dict[str, int]) -> Decision:
    nxt = state.stage_index + 1
    if nxt > len(state.plan.stages):
        done = replace(state, state=State.COMPLETED, paused_since=None)
        return Decision(Action.COMPLETE, done, why + "; observation complete", numbers)
    after = replace(state, state=State.OBSERVING if nxt == len(state.plan.stages) else State.RUNNING,
                    stage_index=nxt, stage_started_at=now, paused_since=None, paused_s=0)
    return Decision(Action.PROMOTE, after, why, numbers, percentage=state.plan.percentage(nxt))


def _rollback(state: RolloutState, now: datetime, limits: Thresholds, why: str,
              numbers: dict[str, int]) -> Decision:
    after = replace(state, state=State.ROLLING_BACK, paused_since=None,
                    check_due_at=now + timedelta(seconds=limits.verify_after_s))
    return Decision(Action.ROLLBACK, after, why, numbers, disable=True, alert="P2")


def _verify(state: RolloutState, ev: Evaluate, now: datetime, limits: Thresholds,
            numbers: dict[str, int]) -> Decision:
    if state.check_due_at is not None and now < state.check_due_at:
        return Decision(Action.HOLD, state, "rollback verification pending", numbers, recorded=False)
    if ev.canary.error_bp_exceeds(limits.rollback_error_bp):
        after = replace(state, state=State.ESCALATED)
        return Decision(Action.ESCALATE, after, "error rate did not drop within 5 minutes of the rollback",
                        numbers, alert="P1")
    return Decision(Action.VERIFIED, replace(state, state=State.ROLLED_BACK),
                    "error rate dropped after the rollback", numbers)


def _numbers(state: RolloutState, event: Event, now: datetime) -> dict[str, int]:
    numbers = {"stage_index": state.stage_index, "percentage": state.plan.percentage(state.stage_index),
               "stage_served_s": int(state.served_s(now))}
    if isinstance(event, Evaluate):
        numbers |= event.canary.numbers("canary") | event.control.numbers("control")
        numbers["open_p1"] = event.open_p1
    return numbers
