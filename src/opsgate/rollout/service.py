"""Toggles, opt-ins and rollouts over one engine: every change goes to the ledger first.

Order of a change: (1) the ledger entry is made durable (``LedgerUnavailable`` -> 503 and nothing
changes), (2) the tables change in one transaction that also increments ``feature_toggle_version``,
(3) this process's :class:`~opsgate.rollout.toggles.ToggleSnapshot` is invalidated; other processes
see the new version within their refresh interval. Inserts (seeded toggles, decision rows) are
written in the ledger's own transaction, so they and their entry commit together.

Ledger kinds: ``toggle.created``, ``toggle.set``, ``opt_in.set``, ``rollout.decision``,
``variant.set`` (payloads hold ids, strings, booleans and integers only).

A **variant rollout** (``start_rollout(..., variant=NAME)``, one operation) releases a candidate
variant instead of switching the operation on: its stages set the share of users (by their bucket
in the assignment's own group id, :func:`variant_group`) served by the candidate; the operation's
toggle is left alone. Promotion from the last stage makes the candidate the live variant (the
previous one is kept for a later rollback); a rollback sends every user back to the live variant
at once. Metrics compare the candidate's calls with the operation's other calls
(:func:`~opsgate.rollout.metrics.metrics_by_variant`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, delete, insert, select, update

from opsgate.clock import Clock
from opsgate.errors import NotFound, OpsgateError
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.writer import Ledger
from opsgate.rollout.bucketing import bucket
from opsgate.rollout.controller import (
    ACTIVE,
    Action,
    Advance,
    CohortMetrics,
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
from opsgate.rollout.metrics import metrics_by_variant, metrics_from_log
from opsgate.rollout.models import (
    feature_toggle_version,
    feature_toggles,
    operation_variants,
    rollout_decisions,
    rollouts,
    user_settings,
)
from opsgate.rollout.shadow import ShadowReport, shadow_report
from opsgate.rollout.toggles import Toggle, ToggleSnapshot, VariantAssignment
from opsgate.rollout.variants import DEFAULT_VARIANT, VariantBook
from opsgate.security.auth import Principal
from opsgate.security.models import users
from opsgate.security.rls import scope_in, service_scope, user_scope
from opsgate.store.db import begin_write

log = logging.getLogger(__name__)

SEED_ACTOR = "opsgate-seed"
"""``updated_by`` of a toggle nobody has changed since it was created (disabled, opt-in)."""
SANDBOX_ACTOR = "sandbox"
BANNER = "{ops} {verb} temporarily unavailable while we investigate a problem. Your data is safe."
SHADOW_STAGE_S = 24 * 3600
"""How long the shadow stage lasts before the controller reports it ``awaiting_promotion``."""
VARIANT_BANNER = "{ops} is back on its previous version while we investigate a problem with a new one. Your data is safe."


def shadow_plan(plan: Plan, variant: str | None, percent: int) -> Plan:
    """``plan`` preceded by the shadow stage: 0 % of users for :data:`SHADOW_STAGE_S`, while
    ``percent`` (1..100) of the live calls are also sent to the candidate. The controller holds
    it (no user is served by the candidate, so there is no canary to judge); ``rollout advance``
    moves to the plan's first stage. :class:`InvalidPlan` without a variant or for a bad share."""
    if variant is None:
        raise InvalidPlan("a shadow stage needs a variant rollout: name the variant to shadow")
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
        raise InvalidPlan("the shadow share must be an integer percentage in 1..100")
    return replace(plan, stages=(Stage(0, SHADOW_STAGE_S), *plan.stages))


def variant_group(operation: str, variant: str) -> str:
    """The bucketing group id of ``variant``'s rollout on ``operation``: independent of the
    operation's toggle group id, so the candidate's users are not the toggle canary's."""
    return f"variant/{operation}/{variant}"


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
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class Rollout:
    """A ``rollouts`` row: its id, operations, controller state and bookkeeping; ``variant`` is
    the candidate of a variant rollout (None: a toggle rollout)."""

    id: int
    operations: tuple[str, ...]
    state: RolloutState
    rolled_back_at: datetime | None
    reason: str | None
    banner: str | None
    version: int
    created_at: datetime
    created_by: str
    variant: str | None = None
    shadow_percent: int | None = None

    def to_json(self) -> dict[str, Any]:
        """API shape: ids, state, ``stage_index`` (from 0) and ``stage`` (:meth:`Plan.stage_label`:
        ``"N/M"`` from 1, or ``"observation"``), percentage, plan, timestamps (ISO 8601)."""
        s = self.state
        return {
            "id": self.id,
            "operations": list(self.operations),
            "variant": self.variant,
            "shadow_percent": self.shadow_percent,
            "state": str(s.state),
            "stage_index": s.stage_index,
            "stage": s.plan.stage_label(s.stage_index),
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
    every write; ``listeners`` receive :class:`RolloutEvent` alerts (exceptions are logged);
    ``variants`` (the configured variants) lets a variant rollout check the name it releases."""

    engine: Engine
    ledger: Ledger
    clock: Clock
    snapshot: ToggleSnapshot | None = None
    limits: Thresholds = field(default_factory=Thresholds)
    listeners: list[Callable[[RolloutEvent], None]] = field(default_factory=list)
    variants: VariantBook | None = None

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
        """One toggle; :class:`NotFound` (404) listing the known operations for an operation
        without a toggle (the gateway seeds one per operation). The message never repeats the
        submitted name: problem details do not echo input (it may hold a secret)."""
        row = self._toggle_row(operation)
        if row is None:
            known = ", ".join(t.operation for t in self.list_toggles())
            raise NotFound(f"unknown operation (known: {known})")
        return Toggle(**row)

    def set_toggle(self, operation: str, change: ToggleChange, actor: str, reason: str = "",
                   *, owner: int | None = None) -> Toggle:
        """Apply ``change`` in the transaction of its ledger entry ``toggle.set`` (before/after):
        the row is read, merged and written while the ledger's append lock is held, so concurrent
        changes apply one after the other and each entry's ``before`` is the state it replaced.
        A change that changes nothing (every given field already has its value) writes no entry
        and returns the toggle as it is: there is nothing to audit, and it is ordered before any
        concurrent change. Engaging the kill switch rolls back every active rollout of the
        operation. ``owner`` is
        the id of the rollout making the change (its own stage changes and rollback). Raises
        :class:`RolloutConflict` (409) when the change gives ``enabled`` or
        ``rollout_percentage`` a new value while another unfinished toggle rollout of the
        operation controls them (:func:`_check_owner`, read in the same transaction, so a rollout
        starting concurrently cannot slip in between), :class:`InvalidPlan` (422) for a
        percentage outside 0..100 or an empty group id, :class:`NotFound` (404); nothing is
        written then."""
        current = self.get_toggle(operation)  # the 404 naming the known operations
        values = {k: v for k, v in asdict(change).items() if v is not None}
        if all(getattr(current, k) == v for k, v in values.items()):
            return current
        where = feature_toggles.c.operation == operation

        def merge(conn: Connection) -> tuple[dict[str, Any], dict[str, Any]]:
            before = dict(conn.execute(select(feature_toggles).where(where)).mappings().one())
            _check_owner(_unfinished_with(conn, (operation,)), before, values, owner)
            after = {**before, **values, "updated_at": self.clock.now(), "updated_by": actor}
            _check_toggle(after)
            conn.execute(update(feature_toggles).where(where)
                         .values({k: v for k, v in after.items() if k != "operation"}))
            _bump_in(conn)
            return before, after

        payload = {"operation": operation, "actor": actor, "reason": reason}
        before, after = self.ledger.append_sync("toggle.set", payload, work=merge,
                                                amend=_toggle_change).work_result
        self._changed()
        if change.kill_switch and not before["kill_switch"]:
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
        """Record ``user_id``'s opt-in choices: the ``user_settings`` rows are written in the
        transaction of their ledger entry ``opt_in.set``, as the user (row-level security on
        PostgreSQL, :func:`~opsgate.security.rls.scope_in`), so there is never an entry without
        its change nor a change without its entry. :class:`NotFound` for an operation without a
        toggle, :class:`LedgerUnavailable` when the transaction fails (nothing is written then).
        Returns all of the user's choices."""
        known = {t.operation for t in self.list_toggles()}
        unknown = sorted(set(choices) - known)
        if unknown:
            raise NotFound(f"{len(unknown)} of the operations given have no feature toggle")
        now = self.clock.now()

        def write(conn: Connection) -> None:
            with scope_in(conn, Principal(user_id, ("user",))):
                conn.execute(delete(user_settings).where(user_settings.c.user_id == user_id,
                                                         user_settings.c.operation.in_(list(choices))))
                if choices:
                    conn.execute(insert(user_settings), [
                        {"user_id": user_id, "operation": op, "opted_in": bool(v), "updated_at": now}
                        for op, v in choices.items()
                    ])
            _bump_in(conn)

        self.ledger.append_sync("opt_in.set", {"user_id": user_id, "choices": dict(choices)}, work=write)
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
    def start_rollout(self, operations: Iterable[str], plan: Plan, actor: str,
                      variant: str | None = None, shadow_percent: int | None = None) -> Rollout:
        """Start a canary of ``operations`` at the plan's first stage: each toggle is enabled, its
        kill switch released, its percentage set (opt-in stays as configured). With ``variant``,
        a variant rollout of one operation: the candidate serves the stage's share of users, the
        toggle is left alone. With ``shadow_percent`` (1..100, variant rollouts only) the plan
        starts with a shadow stage (:func:`shadow_plan`): the candidate serves nobody and that
        share of the live calls is also sent to it. Raises :class:`RolloutConflict` (409) when an
        operation already has an unfinished rollout or ``variant`` is already live,
        :class:`InvalidPlan` (422) for a variant rollout of other than one operation, an empty
        variant name or a bad shadow share, :class:`NotFound` (404) for an unknown operation,
        :class:`VariantNotFound` (404)."""
        ops = tuple(sorted(set(operations)))
        if not ops:
            raise InvalidPlan("name at least one operation")
        for op in ops:
            self.get_toggle(op)
        if variant is not None:
            self._check_candidate(ops, variant)
        if shadow_percent is not None:
            plan = shadow_plan(plan, variant, shadow_percent)
        now = self.clock.now()
        values = {"operations": json.dumps(ops), "plan": json.dumps(plan.to_dict()),
                  "state": State.RUNNING.value, "stage_index": 0, "stage_started_at": now, "paused_s": 0,
                  "version": 0, "created_at": now, "created_by": actor, "updated_at": now,
                  "variant": variant, "shadow_percent": shadow_percent}
        row, payload = self._decision("start", "start", State.RUNNING, State.RUNNING, 0, "rollout started",
                                      {"percentage": plan.percentage(0)}, actor)
        payload |= {"operations": list(ops), "plan": plan.to_dict(),
                    **({"variant": variant} if variant else {}),
                    **({"shadow_percent": shadow_percent} if shadow_percent else {})}

        def insert_if_free(conn: Connection) -> int:
            """In the ledger's transaction, which holds its append lock (SQLite: the database
            write lock), so no other process can insert a rollout between this check and insert."""
            busy = _unfinished_with(conn, ops)
            if busy is not None:
                raise RolloutConflict(f"rollout {busy.id} is still running for {', '.join(busy.operations)}")
            rollout_id: int = conn.execute(insert(rollouts).values(values).returning(rollouts.c.id)).scalar_one()
            conn.execute(insert(rollout_decisions).values({**row, "rollout_id": rollout_id}))
            return rollout_id

        rollout_id = self.ledger.append_sync("rollout.decision", payload, work=insert_if_free,
                                             amend=lambda rid: {"rollout_id": rid}).work_result
        if variant is not None:
            self._enact_variant(rollout_id, "variant canary stage 1")
            return self.get_rollout(rollout_id)
        for op in ops:
            self._enact_toggle(rollout_id, op, "canary stage 1", starting=True)
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

    def shadow(self, rollout: Rollout) -> ShadowReport | None:
        """The shadow calls of ``rollout`` (None when it was started without a shadow stage);
        ``active`` while it is in that stage."""
        if rollout.variant is None or not rollout.shadow_percent:
            return None
        s = rollout.state
        active = s.state in ACTIVE and s.plan.percentage(s.stage_index) == 0
        return shadow_report(self.engine, rollout.operations[0], rollout.variant, rollout.created_at,
                             rollout.shadow_percent, active)

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

    def rollback_operations(self, operations: Iterable[str] | None, reason: str, actor: str) -> RollbackReport:
        """Roll back every unfinished rollout touching ``operations`` (None: every operation) and
        disable the named operations that have none. An operation whose variant rollout is rolled
        back stays on (its users go back to the live variant). Every rollout and operation is
        attempted: one that cannot be rolled back or disabled (an :class:`OpsgateError` such as
        :class:`RolloutConflict` after :data:`ROLLBACK_ATTEMPTS`, or ``LedgerUnavailable``) is
        listed in the report's ``failed`` and the others still go ahead. :class:`NotFound` (404,
        nothing done) for an unknown operation."""
        names = [t.operation for t in self.list_toggles()] if operations is None else list(operations)
        for op in names:
            self.get_toggle(op)
        disabled: set[str] = set()
        on_live: set[str] = set()
        failed: list[RollbackFailure] = []
        for rollout in self._rollouts_with(names, ACTIVE):
            try:
                self.rollback(rollout.id, reason, actor)
            except OpsgateError as exc:
                log.warning("rollout %d could not be rolled back: %s", rollout.id, exc.detail)
                failed.append(RollbackFailure(rollout.id, rollout.operations, exc.detail))
                continue
            (on_live if rollout.variant else disabled).update(rollout.operations)
        not_done = {op for f in failed for op in f.operations}
        for op in sorted(set(names) - on_live - not_done):
            try:
                if op not in disabled and self.get_toggle(op).enabled:
                    self.set_toggle(op, ToggleChange(enabled=False), actor, reason)
            except OpsgateError as exc:
                log.warning("%s could not be disabled: %s", op, exc.detail)
                failed.append(RollbackFailure(None, (op,), exc.detail))
                continue
            disabled.add(op)
        return RollbackReport(sorted(disabled), failed)

    def disable_operation(self, op_id: str, reason: str, actor: str) -> Toggle:
        """:func:`disable_operation` through this service, so the rollback it may cause reaches
        :attr:`listeners` (the ``rollout.rolled_back`` alert)."""
        for rollout in self._rollouts_with([op_id], ACTIVE):
            if rollout.variant is None:
                self.rollback(rollout.id, reason, actor)
        return self.set_toggle(op_id, ToggleChange(enabled=False), actor, reason)

    def evaluate(self, rollout_id: int, open_p1: int = 0) -> Decision | None:
        """Evaluate one rollout on metrics from ``ai_operation_log``: the stage window and its most
        recent ``limits.recent_window_s`` while active, the last ``limits.verify_window_s`` while
        rolling back. A variant rollout compares the candidate's calls with the operation's other
        calls while active. None when the rollout is finished."""
        rollout = self.get_rollout(rollout_id)
        s = rollout.state
        if s.state not in ACTIVE and s.state is not State.ROLLING_BACK:
            return None
        self._converge(rollout)
        now = self.clock.now()
        since = s.stage_started_at
        if s.state is State.ROLLING_BACK:
            since = now - timedelta(seconds=self.limits.verify_window_s)
        def cohorts(start: datetime) -> tuple[CohortMetrics, CohortMetrics]:
            if rollout.variant is None or s.state is State.ROLLING_BACK:
                return metrics_from_log(self.engine, rollout.operations, start, now)
            return metrics_by_variant(self.engine, rollout.operations[0], rollout.variant, start, now)

        canary, control = cohorts(since)
        recent_canary, recent_control = cohorts(max(since, now - timedelta(seconds=self.limits.recent_window_s)))
        return self.apply(rollout_id, Evaluate(canary, control, open_p1, recent_canary, recent_control,
                                                relative=rollout.variant is not None), "controller")

    def evaluate_all(self, open_p1: Callable[[Rollout], int] | None = None) -> dict[int, Decision]:
        """Evaluate every unfinished rollout (the monitoring cadence calls this); ``open_p1(rollout)``
        counts the unresolved P1 incidents that concern that rollout (None: none)."""
        found = self.list_rollouts(ACTIVE | {State.ROLLING_BACK})
        return {r.id: d for r in found
                if (d := self.evaluate(r.id, open_p1(r) if open_p1 else 0)) is not None}

    def banners(self) -> list[dict[str, Any]]:
        """In-app banners: one per rolled-back rollout whose operations are still disabled, and one
        per rolled-back variant rollout until the operation's next rollout starts."""
        toggles = {t.operation: t for t in self.list_toggles()}
        newest: dict[str, int] = {}
        for r in self.list_rollouts():  # newest first
            for op in r.operations:
                newest.setdefault(op, r.id)
        shown = []
        for r in self.list_rollouts([State.ROLLING_BACK, State.ROLLED_BACK, State.ESCALATED]):
            off = [op for op in r.operations if op in toggles
                   and (not toggles[op].enabled or toggles[op].kill_switch)]
            if r.variant is not None:  # the operation stays on: shown until its next rollout starts
                off = [op for op in r.operations if newest[op] == r.id]
            if r.banner and off:
                shown.append({"id": f"rollout-{r.id}", "level": "warning", "message": r.banner,
                              "operations": off,
                              "since": r.rolled_back_at.isoformat() if r.rolled_back_at else None})
        return shown

    def apply(self, rollout_id: int, event: Event, actor: str) -> Decision:
        """Run one controller step and carry out its decision: ledger + history, state update,
        toggle changes, banner and alerts. The state is saved only if the row still has the
        version it was read at (optimistic concurrency). When another process changed the rollout
        meanwhile, a rollback decision (an operator's or the controller's rollback, the kill
        switch) is the safety action and wins: the row is read again and the event stepped again,
        up to :data:`ROLLBACK_ATTEMPTS` times; any other decision (advance, promotion, pause)
        loses. :class:`RolloutConflict` (409) for a rejected event, a non-rollback decision that
        lost the race, or a rollback still conflicting after its attempts."""
        for attempt in range(1, ROLLBACK_ATTEMPTS + 1):
            rollout = self.get_rollout(rollout_id)
            now = self.clock.now()
            decision = step(rollout.state, event, now, self.limits)
            if decision.action is Action.REJECT:
                raise RolloutConflict(decision.reason)
            if decision.action is Action.IGNORE or not decision.recorded:
                return decision
            try:
                self._record(rollout, event, decision, actor, now)
            except RolloutConflict:  # only _save raises it in _record: the row's version moved on
                if not decision.disable:
                    raise
                if attempt == ROLLBACK_ATTEMPTS:
                    raise RolloutConflict(
                        f"rollout {rollout_id} kept changing; the rollback was not applied after "
                        f"{ROLLBACK_ATTEMPTS} attempts: roll it back again") from None
                log.info("rollout %d changed meanwhile; applying the rollback again (attempt %d)",
                         rollout_id, attempt + 1)
                continue
            self._carry_out(rollout, decision, actor, now)
            return decision
        raise AssertionError("unreachable")

    def _record(self, rollout: Rollout, event: Event, decision: Decision, actor: str, now: datetime) -> None:
        """Save ``decision`` (:meth:`_save`) with its history row in its ``rollout.decision``
        entry's transaction: a decision refused as stale leaves no entry and no history behind.
        Raises :class:`RolloutConflict` when the row's version moved on since ``rollout`` was read."""
        row, payload = self._decision(event.name, decision.action.value, rollout.state.state,
                                      decision.after.state, decision.after.stage_index, decision.reason,
                                      decision.numbers, actor)

        def save(conn: Connection) -> None:
            self._save(conn, rollout, decision, now)
            conn.execute(insert(rollout_decisions).values({**row, "rollout_id": rollout.id}))

        self.ledger.append_sync("rollout.decision", {"rollout_id": rollout.id, **payload}, work=save)

    # internals -------------------------------------------------------------------------------
    def _save(self, conn: Connection, rollout: Rollout, decision: Decision, now: datetime) -> None:
        """Write ``decision``'s state on ``conn`` if the row still has the version ``rollout``
        was read at; :class:`RolloutConflict` (nothing written) when another process changed it."""
        after = decision.after
        values: dict[str, Any] = {
            "state": after.state.value, "stage_index": after.stage_index,
            "stage_started_at": after.stage_started_at, "paused_since": after.paused_since,
            "paused_s": after.paused_s, "check_due_at": after.check_due_at,
            "version": rollout.version + 1, "updated_at": now,
        }
        if decision.action is Action.ROLLBACK:
            ops = rollout.operations
            text = VARIANT_BANNER if rollout.variant else BANNER
            values |= {"rolled_back_at": now, "reason": decision.reason,
                       "banner": text.format(ops=", ".join(ops), verb="is" if len(ops) == 1 else "are")}
        done = conn.execute(update(rollouts).where(rollouts.c.id == rollout.id,
                                                   rollouts.c.version == rollout.version).values(values))
        if done.rowcount != 1:
            raise RolloutConflict(f"rollout {rollout.id} changed meanwhile; the decision was not applied")

    def _carry_out(self, rollout: Rollout, decision: Decision, actor: str, now: datetime) -> None:
        """The toggle (or variant assignment) changes of a saved decision, then its alert, which
        goes out even when a change fails (it is retried from the saved state, see
        :meth:`_converge`). Each change is written as the rollout row says *when it is written*
        (:meth:`_enact_toggle`, :meth:`_enact_variant`), not as this decision said: a decision
        overtaken by a newer one writes the newer stage or nothing, never its own older one."""
        reason = f"rollback: {decision.reason}" if decision.disable else decision.reason
        try:
            if decision.disable or decision.percentage is not None or (
                    rollout.variant is not None and decision.after.state is State.OBSERVING):
                if rollout.variant is not None:
                    self._enact_variant(rollout.id, reason)
                else:
                    for op in rollout.operations:
                        self._enact_toggle(rollout.id, op, reason)
        finally:
            if decision.alert:
                kind = "rollout.escalated" if decision.action is Action.ESCALATE else "rollout.rolled_back"
                self._notify(RolloutEvent(kind, decision.alert, rollout.id, rollout.operations,
                                          decision.reason, decision.numbers, now, rollout.variant))

    def _converge(self, rollout: Rollout) -> None:
        """Finish toggle changes a saved decision did not complete (a ledger refusal half-way):
        the rollout row is the durable record of what its toggles must be. Rolling back: every
        operation off. Active: every operation at the stage's percentage. Raises what
        :meth:`set_toggle` raises, so the next evaluation tries again."""
        s = rollout.state
        why = f"rollback (completed): {rollout.reason}" if s.state is State.ROLLING_BACK else "stage (completed)"
        if rollout.variant is not None:
            current = self.assignment(rollout.operations[0])
            if _variant_target(rollout, current):
                self._enact_variant(rollout.id, why)
            return
        for op in rollout.operations:
            toggle = self._toggle_row(op)
            if toggle is not None and _differs(toggle, _toggle_target(rollout)):
                self._enact_toggle(rollout.id, op, why)

    # variants -------------------------------------------------------------------------------
    def assignment(self, operation: str) -> VariantAssignment:
        """``operation``'s variant assignment (``default`` live, no candidate, without a row)."""
        with self.engine.connect() as conn:
            return _assignment_in(conn, operation)

    def _check_candidate(self, ops: tuple[str, ...], variant: str) -> None:
        if len(ops) != 1:
            raise InvalidPlan("a variant rollout releases a variant of exactly one operation")
        if not variant.strip():
            raise InvalidPlan("name the variant to roll out (an empty variant name releases nothing)")
        if self.variants is not None:
            self.variants.get(ops[0], variant)
        if self.assignment(ops[0]).live == variant:
            raise RolloutConflict(f"{variant} is already the live variant of {ops[0]}")

    def _enact_variant(self, rollout_id: int, reason: str) -> VariantAssignment:
        """Bring the variant assignment of variant rollout ``rollout_id`` to what its row says
        (:func:`_variant_target`): the row is read, and the assignment read, changed and written
        with the version counter, in the transaction of the ``variant.set`` entry (under the
        ledger's append lock, so no decision can be saved in between). The entry records
        ``before``/``after`` and the rollout ``version``, ``state`` and ``stage_index`` it carried
        out (and ``started_by`` on a promotion). Nothing is written when the assignment already
        is so. Returns the assignment."""
        op = self.get_rollout(rollout_id).operations[0]
        nothing = RolloutConflict("nothing to change")

        def reassign(conn: Connection) -> tuple[VariantAssignment, VariantAssignment, Rollout]:
            rollout = _rollout_in(conn, rollout_id)
            before = _assignment_in(conn, op)
            changes = _variant_target(rollout, before)
            if not changes:
                raise nothing
            after = replace(before, **changes, updated_at=self.clock.now(), updated_by=f"rollout:{rollout_id}")
            conn.execute(delete(operation_variants).where(operation_variants.c.operation == op))
            conn.execute(insert(operation_variants).values(asdict(after)))
            _bump_in(conn)
            return before, after, rollout

        def amend(done: tuple[VariantAssignment, VariantAssignment, Rollout]) -> dict[str, Any]:
            before, after, rollout = done
            fields = {**_assignment_change((before, after)), **_carried_out(rollout)}
            if after.live != before.live and after.live == rollout.variant:
                fields |= {"started_by": rollout.created_by, "reason": f"{rollout.variant} becomes live: {reason}"}
            return fields

        payload = {"operation": op, "actor": f"rollout:{rollout_id}", "reason": reason}
        done = self._carry_out_entry("variant.set", payload, reassign, amend, nothing)
        return self.assignment(op) if done is None else done[1]

    def _enact_toggle(self, rollout_id: int, operation: str, reason: str, *, starting: bool = False) -> Toggle:
        """Bring ``operation``'s toggle to what toggle rollout ``rollout_id``'s row says
        (:func:`_toggle_target`; ``starting``: also enabled with the kill switch released): the
        row is read, and the toggle read, merged and written, in the transaction of the
        ``toggle.set`` entry (under the ledger's append lock, so no decision can be saved in
        between). A decision overtaken by a newer one therefore writes the newer stage's
        percentage, or nothing, never its own older one; the entry records ``before``/``after``
        and the rollout ``version``, ``state`` and ``stage_index`` it carried out. Nothing is
        written when the toggle already is so. Raises what :meth:`set_toggle` raises."""
        where = feature_toggles.c.operation == operation
        nothing = RolloutConflict("nothing to change")

        def merge(conn: Connection) -> tuple[dict[str, Any], dict[str, Any], Rollout]:
            rollout = _rollout_in(conn, rollout_id)
            before = dict(conn.execute(select(feature_toggles).where(where)).mappings().one())
            values = _toggle_target(rollout, starting=starting)
            if not _differs(before, values):
                raise nothing
            _check_owner(_unfinished_with(conn, (operation,)), before, values, rollout_id)
            after = {**before, **values, "updated_at": self.clock.now(), "updated_by": f"rollout:{rollout_id}"}
            _check_toggle(after)
            conn.execute(update(feature_toggles).where(where)
                         .values({k: v for k, v in after.items() if k != "operation"}))
            _bump_in(conn)
            return before, after, rollout

        def amend(done: tuple[dict[str, Any], dict[str, Any], Rollout]) -> dict[str, Any]:
            before, after, rollout = done
            return {**_toggle_change((before, after)), **_carried_out(rollout)}

        payload = {"operation": operation, "actor": f"rollout:{rollout_id}", "reason": reason}
        done = self._carry_out_entry("toggle.set", payload, merge, amend, nothing)
        return self.get_toggle(operation) if done is None else Toggle(**done[1])

    def _carry_out_entry(self, kind: str, payload: dict[str, Any], work: Callable[[Connection], Any],
                         amend: Callable[[Any], dict[str, Any]], nothing: RolloutConflict) -> Any:
        """Append a ``kind`` ledger entry whose transaction runs ``work`` (and ``amend`` on its
        result); ``work``'s result, or ``None`` when ``work`` raised ``nothing`` (there was nothing
        to change, no entry). Another :class:`RolloutConflict` propagates."""
        try:
            done = self.ledger.append_sync(kind, payload, work=work, amend=amend).work_result
        except RolloutConflict as exc:
            if exc is not nothing:
                raise
            return None
        self._changed()
        return done

    def _notify(self, event: RolloutEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("rollout alert listener failed for %s", event.kind)

    def _decision(self, event: str, action: str, before: State, after: State, stage_index: int,
                  reason: str, numbers: dict[str, int], actor: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A ``rollout_decisions`` row and its ledger payload, both without the rollout id."""
        row = {"at": self.clock.now(), "event": event, "action": action,
               "state_before": before.value, "state_after": after.value, "stage_index": stage_index,
               "reason": reason, "numbers": json.dumps(numbers, sort_keys=True), "actor": actor}
        payload = {k: v for k, v in row.items() if k not in ("at", "numbers")}
        return row, {**payload, "numbers": numbers}

    def _rollouts_with(self, operations: Iterable[str], states: Iterable[State]) -> list[Rollout]:
        wanted = set(operations)
        return [r for r in self.list_rollouts(states) if wanted.intersection(r.operations)]

    def _toggle_row(self, operation: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(feature_toggles).where(feature_toggles.c.operation == operation))
            found = row.mappings().first()
        return dict(found) if found else None

    def _bump(self) -> None:
        with begin_write(self.engine) as conn:
            _bump_in(conn)
        self._changed()

    def _changed(self) -> None:
        if self.snapshot is not None:
            self.snapshot.invalidate()


def disable_operation(engine: Engine, op_id: str, reason: str, actor: str, *, ledger: Ledger,
                      clock: Clock) -> Toggle:
    """Turn ``op_id`` off (e.g. a budget enforcement failure), recorded in ``ledger`` as
    ``toggle.set`` by ``actor`` with ``reason``. An active toggle rollout of the operation is
    rolled back first, as the kill switch does: it owns ``enabled``, and its rollback disables the
    operation. Other processes stop serving the operation within their refresh interval."""
    return RolloutService(engine, ledger, clock).disable_operation(op_id, reason, actor)


ROLLBACK_ATTEMPTS = 8
"""How many times :meth:`RolloutService.apply` reads a rollout again and re-applies a rollback
whose save found the row changed by another process (each attempt is one read and one
version-checked save; only decisions concurrently saved by other callers make it retry)."""


@dataclass(frozen=True, slots=True)
class RollbackFailure:
    """One rollout (``rollout_id``; None: an operation without a rollout that could not be
    disabled) of :meth:`RolloutService.rollback_operations` left as it was: its
    ``operations`` and the error's ``detail`` (the 409/503 problem detail)."""

    rollout_id: int | None
    operations: tuple[str, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class RollbackReport:
    """What :meth:`RolloutService.rollback_operations` did: the operations now ``disabled``
    (sorted) and every rollout or operation it could not roll back (``failed``, in the order
    attempted; empty when all went through)."""

    disabled: list[str]
    failed: list[RollbackFailure]


def _toggle_target(rollout: Rollout, *, starting: bool = False) -> dict[str, Any]:
    """The toggle fields toggle rollout ``rollout`` (as saved) implies for each of its
    operations: rolling back, off; active, the stage's percentage (``starting``: also enabled,
    kill switch released); finished, nothing (the toggle is no longer the rollout's)."""
    s = rollout.state
    if s.state is State.ROLLING_BACK:
        return {"enabled": False}
    if s.state not in ACTIVE:
        return {}
    values: dict[str, Any] = {"rollout_percentage": s.plan.percentage(s.stage_index)}
    return values | ({"enabled": True, "kill_switch": False} if starting else {})


def _variant_target(rollout: Rollout, before: VariantAssignment) -> dict[str, Any]:
    """The changes variant rollout ``rollout`` (as saved) implies for its operation's
    assignment ``before``: rolling back, every user on the live variant (the previous live one
    if the candidate was promoted); in a stage, the candidate at the stage's share in its own
    group; observing (promoted), the candidate live, the old live one kept as ``previous``;
    finished, nothing. Only the fields that differ from ``before``; ``{}`` when it already is so."""
    s, variant, op = rollout.state, rollout.variant, rollout.operations[0]
    wanted: dict[str, Any] = {}
    if s.state is State.ROLLING_BACK:
        if before.candidate == variant:
            wanted |= {"candidate": None, "candidate_percentage": 0}
        if before.live == variant and before.previous is not None:
            wanted |= {"live": before.previous, "previous": None}
        return wanted
    if s.state not in ACTIVE or variant is None:
        return {}
    if s.stage_index >= len(s.plan.stages):
        wanted = {"candidate": None, "candidate_percentage": 0}
        if before.live != variant:
            wanted |= {"live": variant, "previous": before.live}
        elif before.candidate != variant:
            return {}
    else:
        wanted = {"candidate": variant, "candidate_percentage": s.plan.percentage(s.stage_index),
                  "group_id": variant_group(op, variant), "shadow_percentage": rollout.shadow_percent or 0}
    return {k: v for k, v in wanted.items() if getattr(before, k) != v}


def _differs(row: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return any(row[k] != v for k, v in values.items())


def _carried_out(rollout: Rollout) -> dict[str, Any]:
    """The ledger fields naming the saved rollout state a toggle or assignment change carries out."""
    return {"rollout_version": rollout.version, "rollout_state": rollout.state.state.value,
            "stage_index": rollout.state.stage_index}


def _rollout_in(conn: Connection, rollout_id: int) -> Rollout:
    """Rollout ``rollout_id`` read on ``conn``."""
    return _rollout(conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).mappings().one())


def _bump_in(conn: Connection) -> None:
    conn.execute(update(feature_toggle_version).where(feature_toggle_version.c.id == 1)
                 .values(version=feature_toggle_version.c.version + 1))


_TOGGLE_FIELDS = ("enabled", "rollout_percentage", "group_id", "opt_in_required", "kill_switch")


def _toggle_payload(values: Mapping[str, Any], actor: str | None = None, reason: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {k: values[k] for k in _TOGGLE_FIELDS}
    if actor is not None:
        payload |= {"operation": values["operation"], "actor": actor, "reason": reason or ""}
    return payload


def _toggle_change(change: tuple[Mapping[str, Any], Mapping[str, Any]]) -> dict[str, Any]:
    """The ``before`` and ``after`` fields of a ``toggle.set`` entry."""
    before, after = change
    return {"before": _toggle_payload(before), "after": _toggle_payload(after)}


def _assignment_in(conn: Connection, operation: str) -> VariantAssignment:
    """:meth:`RolloutService.assignment`, read on ``conn``."""
    row = conn.execute(select(operation_variants).where(operation_variants.c.operation == operation))
    found = row.mappings().first()
    if found is None:
        return VariantAssignment(operation, DEFAULT_VARIANT, None, None, 0, operation,
                                 datetime(1970, 1, 1, tzinfo=UTC), SEED_ACTOR)
    return VariantAssignment(**found)


def _assignment_change(change: tuple[VariantAssignment, VariantAssignment]) -> dict[str, Any]:
    """The ``before`` and ``after`` fields of a ``variant.set`` entry."""
    before, after = change
    return {"before": _assignment_payload(before), "after": _assignment_payload(after)}


def _assignment_payload(a: VariantAssignment) -> dict[str, Any]:
    return {"live": a.live, "previous": a.previous, "candidate": a.candidate,
            "candidate_percentage": a.candidate_percentage, "group_id": a.group_id,
            "shadow_percentage": a.shadow_percentage}


def _check_toggle(values: Mapping[str, Any]) -> None:
    pct = values["rollout_percentage"]
    if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
        raise InvalidPlan("rollout_percentage must be an integer in 0..100")
    if not values["group_id"] or len(values["group_id"]) > 128:
        raise InvalidPlan("group_id must be 1 to 128 characters")


_OWNED_FIELDS = ("enabled", "rollout_percentage")
"""The toggle fields an unfinished toggle rollout sets at each stage and on rollback."""


def _check_owner(busy: Rollout | None, before: Mapping[str, Any], values: Mapping[str, Any],
                 owner: int | None) -> None:
    """Refuse (:class:`RolloutConflict`, 409) a change of ``enabled`` or ``rollout_percentage``
    (``values`` against the row ``before``) while ``busy``, the operation's unfinished rollout,
    controls them, unless ``owner`` is that rollout. A variant rollout leaves the toggle alone;
    disabling agrees with a rollout that is rolling back; the kill switch is never refused."""
    if busy is None or busy.variant is not None or owner == busy.id:
        return
    changed = [k for k in _OWNED_FIELDS if k in values and values[k] != before[k]]
    if not changed or (busy.state.state is State.ROLLING_BACK and changed == ["enabled"] and not values["enabled"]):
        return
    raise RolloutConflict(
        f"rollout {busy.id} ({busy.state.state.value}) controls {' and '.join(_OWNED_FIELDS)} of "
        f"{', '.join(busy.operations)}: advance it (POST /v1/admin/rollouts/{busy.id}/advance), roll it back "
        f"(POST /v1/admin/rollouts/{busy.id}/rollback), engage the kill switch, or wait until it has finished")


def _unfinished_with(conn: Connection, operations: tuple[str, ...]) -> Rollout | None:
    """The newest rollout still active or rolling back that touches one of ``operations``, read
    on ``conn``; None when there is none."""
    query = (select(rollouts).where(rollouts.c.state.in_([s.value for s in ACTIVE | {State.ROLLING_BACK}]))
             .order_by(rollouts.c.id.desc()))
    found = (_rollout(r) for r in conn.execute(query).mappings())
    return next((r for r in found if set(operations).intersection(r.operations)), None)


def _rollout(row: RowMapping) -> Rollout:
    plan_doc = json.loads(row["plan"])
    plan = Plan(tuple(Stage(s["percentage"], s["seconds"]) for s in plan_doc["stages"]),
                plan_doc["observation_s"])
    state = RolloutState(State(row["state"]), row["stage_index"], row["stage_started_at"], plan,
                         row["paused_since"], row["paused_s"], row["check_due_at"])
    return Rollout(row["id"], tuple(json.loads(row["operations"])), state, row["rolled_back_at"],
                   row["reason"], row["banner"], row["version"], row["created_at"], row["created_by"],
                   row["variant"], row["shadow_percent"])
