"""Toggles, opt-ins and rollouts over one engine: every change goes to the ledger first.

Order of a change: (1) the ledger entry is made durable (``LedgerUnavailable`` -> 503 and nothing
changes), (2) the tables change in one transaction that also increments ``feature_toggle_version``,
(3) this process's :class:`~opsgate.rollout.toggles.ToggleSnapshot` is invalidated; other processes
see the new version within their refresh interval. Inserts (seeded toggles, decision rows) are
written in the ledger's own transaction, so they and their entry commit together.

Ledger kinds: ``toggle.created``, ``toggle.set``, ``opt_in.set``, ``rollout.decision`` (payloads hold
ids, strings, booleans and integers only).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from sqlalchemy import Connection, Engine, RowMapping, delete, insert, select, update

from opsgate.clock import Clock
from opsgate.errors import NotFound
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.writer import Ledger
from opsgate.rollout.bucketing import bucket
from opsgate.rollout.controller import (
    ACTIVE,
    Action,
    Advance,
    Decision,
    Evaluate,
    Event,
    KillSwitch,
    Plan,
    Rollback,
    RolloutState,
    Stage,
    State,
    Thresholds,
    step,
)
from opsgate.rollout.errors import InvalidPlan, RolloutConflict, RolloutNotFound
from opsgate.rollout.metrics import metrics_from_log
from opsgate.rollout.models import (
    feature_toggle_version,
    feature_toggles,
    rollout_decisions,
    rollouts,
    user_settings,
)
from opsgate.rollout.toggles import Toggle, ToggleSnapshot
from opsgate.security.auth import Principal
from opsgate.security.rls import service_scope, user_scope
from opsgate.store.models import users

log = logging.getLogger(__name__)

SEED_ACTOR = "opsgate-seed"
"""``updated_by`` of a toggle nobody has changed since it was created (disabled, opt-in)."""
SANDBOX_ACTOR = "sandbox"
BANNER = "{ops} {verb} temporarily unavailable while we investigate a problem. Your data is safe."


@dataclass(frozen=True, slots=True)
class ToggleChange:
    """A partial toggle update; None leaves a field as it is."""

    enabled: bool | None = None
    rollout_percentage: int | None = None
    group_id: str | None = None
    opt_in_required: bool | None = None
    kill_switch: bool | None = None


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """What the alerting system receives: ``kind`` ``rollout.rolled_back`` (severity ``P2``) or
    ``rollout.escalated`` (``P1``), the rollout, its operations, the reason and the numbers."""

    kind: str
    severity: str
    rollout_id: int
    operations: tuple[str, ...]
    reason: str
    numbers: dict[str, int]
    at: datetime


@dataclass(frozen=True, slots=True)
class Rollout:
    """A ``rollouts`` row: its id, operations, controller state and bookkeeping."""

    id: int
    operations: tuple[str, ...]
    state: RolloutState
    rolled_back_at: datetime | None
    reason: str | None
    banner: str | None
    version: int
    created_at: datetime
    created_by: str

    def to_json(self) -> dict[str, Any]:
        """API shape: ids, state, stage, percentage, plan, timestamps (ISO 8601)."""
        s = self.state
        return {
            "id": self.id,
            "operations": list(self.operations),
            "state": str(s.state),
            "stage_index": s.stage_index,
            "percentage": s.plan.percentage(s.stage_index),
            "stage_started_at": s.stage_started_at.isoformat(),
            "plan": s.plan.to_dict(),
            "check_due_at": s.check_due_at.isoformat() if s.check_due_at else None,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


@dataclass
class RolloutService:
    """Toggles, opt-ins and rollouts of one database. ``snapshot`` (optional) is invalidated after
    every write; ``listeners`` receive :class:`RolloutEvent` alerts (exceptions are logged)."""

    engine: Engine
    ledger: Ledger
    clock: Clock
    snapshot: ToggleSnapshot | None = None
    limits: Thresholds = field(default_factory=Thresholds)
    listeners: list[Callable[[RolloutEvent], None]] = field(default_factory=list)

    # toggles ---------------------------------------------------------------------------------
    def ensure_toggles(self, operations: Iterable[str]) -> list[str]:
        """Create a disabled, opt-in toggle (group id = the operation id) for every operation that
        has none ("Start with feature disabled"). Returns the operations created."""
        created = []
        for op in operations:
            if self._toggle_row(op) is not None:
                continue
            row = {"operation": op, "enabled": False, "rollout_percentage": 0, "group_id": op,
                   "opt_in_required": True, "kill_switch": False,
                   "updated_at": self.clock.now(), "updated_by": SEED_ACTOR}
            try:
                self.ledger.append_sync("toggle.created", _toggle_payload(row, SEED_ACTOR, "seed"),
                                        rows=[(feature_toggles, row)])
            except LedgerUnavailable:
                if self._toggle_row(op) is None:  # not a concurrent creator: a real outage
                    raise
                continue
            created.append(op)
        if created:
            self._bump()
        return created

    def enable_for_sandbox(self) -> list[str]:
        """Sandbox runs only: every toggle still as seeded becomes enabled at 100 % without opt-in,
        recorded as an admin change by ``sandbox``. Toggles an admin changed are left alone."""
        seeded = [t.operation for t in self.list_toggles() if t.updated_by == SEED_ACTOR]
        change = ToggleChange(enabled=True, rollout_percentage=100, opt_in_required=False)
        for op in seeded:
            self.set_toggle(op, change, SANDBOX_ACTOR, "sandbox run: all operations for all users")
        return seeded

    def list_toggles(self) -> list[Toggle]:
        """Every toggle, by operation id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(feature_toggles).order_by(feature_toggles.c.operation))
            return [Toggle(**r._mapping) for r in rows]

    def get_toggle(self, operation: str) -> Toggle:
        """One toggle; :class:`NotFound` (404) for an operation without one."""
        row = self._toggle_row(operation)
        if row is None:
            raise NotFound("no feature toggle for that operation (GET /v1/admin/toggles lists them)")
        return Toggle(**row)

    def set_toggle(self, operation: str, change: ToggleChange, actor: str, reason: str = "") -> Toggle:
        """Apply ``change`` (ledger entry ``toggle.set`` with before/after). Engaging the kill
        switch rolls back every active rollout of the operation. Raises :class:`InvalidPlan` (422)
        for a percentage outside 0..100 or an empty group id, :class:`NotFound` (404)."""
        before = self.get_toggle(operation)
        values = {k: v for k, v in asdict(change).items() if v is not None}
        after = {**asdict(before), **values, "updated_at": self.clock.now(), "updated_by": actor}
        _check_toggle(after)
        self.ledger.append_sync("toggle.set", {
            "operation": operation, "actor": actor, "reason": reason,
            "before": _toggle_payload(asdict(before)),
            "after": _toggle_payload(after),
        })
        with self.engine.begin() as conn:
            conn.execute(update(feature_toggles).where(feature_toggles.c.operation == operation)
                         .values({k: v for k, v in after.items() if k != "operation"}))
            _bump_in(conn)
        self._changed()
        if change.kill_switch and not before.kill_switch:
            for rollout in self._rollouts_with([operation], ACTIVE):
                self.apply(rollout.id, KillSwitch(operation), actor)
        return Toggle(**after)

    # opt-ins ---------------------------------------------------------------------------------
    def get_opt_ins(self, user_id: str) -> dict[str, bool]:
        """``{operation: opted_in}`` for every operation with a toggle (False when never set)."""
        with user_scope(self.engine, Principal(user_id, ("user",))) as conn:  # RLS on PostgreSQL
            rows = conn.execute(select(user_settings.c.operation, user_settings.c.opted_in)
                                .where(user_settings.c.user_id == user_id))
            chosen = {op: opted for op, opted in rows}
        return {t.operation: bool(chosen.get(t.operation, False)) for t in self.list_toggles()}

    def set_opt_ins(self, user_id: str, choices: Mapping[str, bool]) -> dict[str, bool]:
        """Record ``user_id``'s opt-in choices (ledger ``opt_in.set``); :class:`NotFound` for an
        operation without a toggle. Returns all of the user's choices."""
        known = {t.operation for t in self.list_toggles()}
        unknown = sorted(set(choices) - known)
        if unknown:
            raise NotFound(f"{len(unknown)} of the operations given have no feature toggle")
        self.ledger.append_sync("opt_in.set", {"user_id": user_id, "choices": dict(choices)})
        now = self.clock.now()
        with user_scope(self.engine, Principal(user_id, ("user",))) as conn:  # RLS on PostgreSQL
            conn.execute(delete(user_settings).where(user_settings.c.user_id == user_id,
                                                     user_settings.c.operation.in_(list(choices))))
            if choices:
                conn.execute(insert(user_settings), [
                    {"user_id": user_id, "operation": op, "opted_in": bool(v), "updated_at": now}
                    for op, v in choices.items()
                ])
            _bump_in(conn)
        self._changed()
        return self.get_opt_ins(user_id)

    def adoption(self) -> dict[str, dict[str, int]]:
        """Per operation: ``eligible`` users (known users the toggle lets in, opt-in aside),
        ``opted_in`` among them, and ``rate_ppm`` = opted_in / eligible in parts per million."""
        with service_scope(self.engine) as conn:  # every user's opt-ins (RLS on PostgreSQL)
            user_ids = conn.execute(select(users.c.user_id)).scalars().all()
            query = select(user_settings.c.operation, user_settings.c.user_id).where(user_settings.c.opted_in)
            opted = {(op, user) for op, user in conn.execute(query)}
        report = {}
        for t in self.list_toggles():
            live = t.enabled and not t.kill_switch
            eligible = [u for u in user_ids if live and bucket(t.group_id, u) <= t.rollout_percentage]
            n_opted = sum(1 for u in eligible if (t.operation, u) in opted)
            rate = n_opted * 1_000_000 // len(eligible) if eligible else 0
            report[t.operation] = {"eligible": len(eligible), "opted_in": n_opted, "rate_ppm": rate}
        return report

    # rollouts --------------------------------------------------------------------------------
    def start_rollout(self, operations: Iterable[str], plan: Plan, actor: str) -> Rollout:
        """Start a canary of ``operations`` at the plan's first stage: each toggle is enabled, its
        kill switch released, its percentage set (opt-in stays as configured). Raises
        :class:`RolloutConflict` (409) when an operation already has an unfinished rollout."""
        ops = tuple(sorted(set(operations)))
        if not ops:
            raise InvalidPlan("name at least one operation")
        for op in ops:
            self.get_toggle(op)
        busy = self._rollouts_with(ops, ACTIVE | {State.ROLLING_BACK})
        if busy:
            raise RolloutConflict(f"rollout {busy[0].id} is still running for {', '.join(busy[0].operations)}")
        now = self.clock.now()
        with self.engine.begin() as conn:
            rollout_id = conn.execute(insert(rollouts).values(
                operations=json.dumps(ops), plan=json.dumps(plan.to_dict()), state=State.RUNNING.value,
                stage_index=0, stage_started_at=now, paused_s=0, version=0, created_at=now,
                created_by=actor, updated_at=now).returning(rollouts.c.id)).scalar_one()
        try:
            self._record(rollout_id, "start", "start", State.RUNNING, State.RUNNING, 0,
                         "rollout started", {"percentage": plan.percentage(0)}, actor,
                         extra={"operations": list(ops), "plan": plan.to_dict()})
        except Exception:
            with self.engine.begin() as conn:
                conn.execute(delete(rollouts).where(rollouts.c.id == rollout_id))
            raise
        change = ToggleChange(enabled=True, rollout_percentage=plan.percentage(0), kill_switch=False)
        for op in ops:
            self.set_toggle(op, change, f"rollout:{rollout_id}", "canary stage 1")
        return self.get_rollout(rollout_id)

    def get_rollout(self, rollout_id: int) -> Rollout:
        """One rollout; :class:`RolloutNotFound` (404)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).mappings().first()
        if row is None:
            raise RolloutNotFound(f"no rollout {rollout_id}")
        return _rollout(row)

    def list_rollouts(self, states: Iterable[State] | None = None) -> list[Rollout]:
        """Rollouts, newest first, optionally only in ``states``."""
        query = select(rollouts).order_by(rollouts.c.id.desc())
        if states is not None:
            query = query.where(rollouts.c.state.in_([s.value for s in states]))
        with self.engine.connect() as conn:
            return [_rollout(r) for r in conn.execute(query).mappings()]

    def history(self, rollout_id: int) -> list[dict[str, Any]]:
        """The rollout's decisions, oldest first: ``{at, event, action, state_before, state_after,
        stage_index, reason, numbers, actor}``."""
        query = (select(rollout_decisions).where(rollout_decisions.c.rollout_id == rollout_id)
                 .order_by(rollout_decisions.c.id))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**{k: r[k] for k in ("event", "action", "state_before", "state_after",
                                      "stage_index", "reason", "actor")},
                 "at": r["at"].isoformat(), "numbers": json.loads(r["numbers"])} for r in rows]

    def advance(self, rollout_id: int, actor: str) -> Decision:
        """Promote now (409 :class:`RolloutConflict` unless the rollout is active)."""
        return self.apply(rollout_id, Advance(), actor)

    def rollback(self, rollout_id: int, reason: str, actor: str) -> Decision:
        """Roll one rollout back (disable its operations, banner, alert, 5-minute check)."""
        return self.apply(rollout_id, Rollback(reason), actor)

    def rollback_operations(self, operations: Iterable[str] | None, reason: str, actor: str) -> list[str]:
        """Roll back every unfinished rollout touching ``operations`` (None: every operation) and
        disable the named operations that have none. Returns the operations now disabled."""
        names = [t.operation for t in self.list_toggles()] if operations is None else list(operations)
        for op in names:
            self.get_toggle(op)
        disabled: set[str] = set()
        for rollout in self._rollouts_with(names, ACTIVE):
            self.rollback(rollout.id, reason, actor)
            disabled.update(rollout.operations)
        for op in names:
            if op not in disabled and self.get_toggle(op).enabled:
                self.set_toggle(op, ToggleChange(enabled=False), actor, reason)
            disabled.add(op)
        return sorted(disabled)

    def evaluate(self, rollout_id: int, open_p1: int = 0) -> Decision | None:
        """Evaluate one rollout on metrics from ``ai_operation_log``: the stage window and its most
        recent ``limits.recent_window_s`` while active, the last ``limits.verify_window_s`` while
        rolling back. None when the rollout is finished."""
        rollout = self.get_rollout(rollout_id)
        s = rollout.state
        if s.state not in ACTIVE and s.state is not State.ROLLING_BACK:
            return None
        self._converge(rollout)
        now = self.clock.now()
        since = s.stage_started_at
        if s.state is State.ROLLING_BACK:
            since = now - timedelta(seconds=self.limits.verify_window_s)
        canary, control = metrics_from_log(self.engine, rollout.operations, since, now)
        recent = max(since, now - timedelta(seconds=self.limits.recent_window_s))
        recent_canary, recent_control = metrics_from_log(self.engine, rollout.operations, recent, now)
        return self.apply(rollout_id, Evaluate(canary, control, open_p1, recent_canary, recent_control),
                          "controller")

    def evaluate_all(self, open_p1: int = 0) -> dict[int, Decision]:
        """Evaluate every unfinished rollout (the monitoring cadence calls this)."""
        found = self.list_rollouts(ACTIVE | {State.ROLLING_BACK})
        return {r.id: d for r in found if (d := self.evaluate(r.id, open_p1)) is not None}

    def banners(self) -> list[dict[str, Any]]:
        """In-app banners: one per rolled-back rollout whose operations are still disabled."""
        toggles = {t.operation: t for t in self.list_toggles()}
        shown = []
        for r in self.list_rollouts([State.ROLLING_BACK, State.ROLLED_BACK, State.ESCALATED]):
            off = [op for op in r.operations if op in toggles
                   and (not toggles[op].enabled or toggles[op].kill_switch)]
            if r.banner and off:
                shown.append({"id": f"rollout-{r.id}", "level": "warning", "message": r.banner,
                              "operations": off,
                              "since": r.rolled_back_at.isoformat() if r.rolled_back_at else None})
        return shown

    def apply(self, rollout_id: int, event: Event, actor: str) -> Decision:
        """Run one controller step and carry out its decision: ledger + history, state update,
        toggle changes, banner and alerts. :class:`RolloutConflict` (409) for a rejected event or
        when another process changed the rollout meanwhile."""
        rollout = self.get_rollout(rollout_id)
        now = self.clock.now()
        decision = step(rollout.state, event, now, self.limits)
        if decision.action is Action.REJECT:
            raise RolloutConflict(decision.reason)
        if decision.action is Action.IGNORE:
            return decision
        self._record(rollout_id, event.name, decision.action.value, rollout.state.state,
                     decision.after.state, decision.after.stage_index, decision.reason, decision.numbers, actor)
        self._save(rollout, decision, now)
        self._carry_out(rollout, decision, actor, now)
        return decision

    # internals -------------------------------------------------------------------------------
    def _save(self, rollout: Rollout, decision: Decision, now: datetime) -> None:
        after = decision.after
        values: dict[str, Any] = {
            "state": after.state.value, "stage_index": after.stage_index,
            "stage_started_at": after.stage_started_at, "paused_since": after.paused_since,
            "paused_s": after.paused_s, "check_due_at": after.check_due_at,
            "version": rollout.version + 1, "updated_at": now,
        }
        if decision.action is Action.ROLLBACK:
            ops = rollout.operations
            values |= {"rolled_back_at": now, "reason": decision.reason,
                       "banner": BANNER.format(ops=", ".join(ops), verb="is" if len(ops) == 1 else "are")}
        with self.engine.begin() as conn:
            done = conn.execute(update(rollouts).where(rollouts.c.id == rollout.id,
                                                       rollouts.c.version == rollout.version).values(values))
        if done.rowcount != 1:
            raise RolloutConflict(f"rollout {rollout.id} changed meanwhile; the decision was not applied")

    def _carry_out(self, rollout: Rollout, decision: Decision, actor: str, now: datetime) -> None:
        """The toggle changes of a saved decision, then its alert, which goes out even when a
        toggle change fails (that change is retried from the saved state, see :meth:`_converge`)."""
        who = f"rollout:{rollout.id}"
        try:
            if decision.percentage is not None:
                for op in rollout.operations:
                    self.set_toggle(op, ToggleChange(rollout_percentage=decision.percentage), who, decision.reason)
            if decision.disable:
                for op in rollout.operations:
                    if self.get_toggle(op).enabled:
                        self.set_toggle(op, ToggleChange(enabled=False), who, f"rollback: {decision.reason}")
        finally:
            if decision.alert:
                kind = "rollout.escalated" if decision.action is Action.ESCALATE else "rollout.rolled_back"
                self._notify(RolloutEvent(kind, decision.alert, rollout.id, rollout.operations,
                                          decision.reason, decision.numbers, now))

    def _converge(self, rollout: Rollout) -> None:
        """Finish toggle changes a saved decision did not complete (a ledger refusal half-way):
        the rollout row is the durable record of what its toggles must be. Rolling back: every
        operation off. Active: every operation at the stage's percentage. Raises what
        :meth:`set_toggle` raises, so the next evaluation tries again."""
        s, who = rollout.state, f"rollout:{rollout.id}"
        for op in rollout.operations:
            toggle = self.get_toggle(op)
            if s.state is State.ROLLING_BACK and toggle.enabled:
                self.set_toggle(op, ToggleChange(enabled=False), who, f"rollback (completed): {rollout.reason}")
            elif s.state in ACTIVE and toggle.rollout_percentage != s.plan.percentage(s.stage_index):
                self.set_toggle(op, ToggleChange(rollout_percentage=s.plan.percentage(s.stage_index)), who,
                                "stage percentage (completed)")

    def _notify(self, event: RolloutEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("rollout alert listener failed for %s", event.kind)

    def _record(self, rollout_id: int, event: str, action: str, before: State, after: State,
                stage_index: int, reason: str, numbers: dict[str, int], actor: str,
                extra: dict[str, Any] | None = None) -> None:
        row = {"rollout_id": rollout_id, "at": self.clock.now(), "event": event, "action": action,
               "state_before": before.value, "state_after": after.value, "stage_index": stage_index,
               "reason": reason, "numbers": json.dumps(numbers, sort_keys=True), "actor": actor}
        payload = {k: v for k, v in row.items() if k not in ("at", "numbers")}
        self.ledger.append_sync("rollout.decision", {**payload, "numbers": numbers, **(extra or {})},
                                rows=[(rollout_decisions, row)])

    def _rollouts_with(self, operations: Iterable[str], states: Iterable[State]) -> list[Rollout]:
        wanted = set(operations)
        return [r for r in self.list_rollouts(states) if wanted.intersection(r.operations)]

    def _toggle_row(self, operation: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(feature_toggles).where(feature_toggles.c.operation == operation))
            found = row.mappings().first()
        return dict(found) if found else None

    def _bump(self) -> None:
        with self.engine.begin() as conn:
            _bump_in(conn)
        self._changed()

    def _changed(self) -> None:
        if self.snapshot is not None:
            self.snapshot.invalidate()


def disable_operation(engine: Engine, op_id: str, reason: str, actor: str, *, ledger: Ledger,
                      clock: Clock) -> Toggle:
    """Turn ``op_id`` off (e.g. a budget enforcement failure), recorded in ``ledger`` as
    ``toggle.set`` by ``actor`` with ``reason``. Other processes stop serving the operation within
    their refresh interval."""
    return RolloutService(engine, ledger, clock).set_toggle(op_id, ToggleChange(enabled=False), actor, reason)


def _bump_in(conn: Connection) -> None:
    conn.execute(update(feature_toggle_version).where(feature_toggle_version.c.id == 1)
                 .values(version=feature_toggle_version.c.version + 1))


_TOGGLE_FIELDS = ("enabled", "rollout_percentage", "group_id", "opt_in_required", "kill_switch")


def _toggle_payload(values: Mapping[str, Any], actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {k: values[k] for k in _TOGGLE_FIELDS}
    if actor is not None:
        payload |= {"operation": values["operation"], "actor": actor, "reason": reason or ""}
    return payload


def _check_toggle(values: Mapping[str, Any]) -> None:
    pct = values["rollout_percentage"]
    if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
        raise InvalidPlan("rollout_percentage must be an integer in 0..100")
    if not values["group_id"] or len(values["group_id"]) > 128:
        raise InvalidPlan("group_id must be 1 to 128 characters")


def _rollout(row: RowMapping) -> Rollout:
    plan_doc = json.loads(row["plan"])
    plan = Plan(tuple(Stage(s["percentage"], s["seconds"]) for s in plan_doc["stages"]),
                plan_doc["observation_s"])
    state = RolloutState(State(row["state"]), row["stage_index"], as_utc(row["stage_started_at"]), plan,
                         as_utc(row["paused_since"]), row["paused_s"], as_utc(row["check_due_at"]))
    return Rollout(row["id"], tuple(json.loads(row["operations"])), state, as_utc(row["rolled_back_at"]),
                   row["reason"], row["banner"], row["version"], as_utc(row["created_at"]), row["created_by"])


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
