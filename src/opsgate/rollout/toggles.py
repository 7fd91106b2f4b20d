"""Toggle evaluation: a pure function over one toggle, and a per-process in-memory snapshot.

A user gets an operation when (in this order) its toggle exists, the kill switch is off, it is
enabled, the user's bucket (:func:`~opsgate.rollout.bucketing.bucket`) is within the rollout
percentage, and, when the toggle requires opt-in, the user has opted in. An unknown operation's
toggle is treated as disabled (fail closed).

:class:`ToggleSnapshot` holds every toggle and opt-in in dicts, so a check costs a dict lookup and
one MurmurHash3 (bench/toggles.py). It re-reads the ``feature_toggle_version`` row at most every
``refresh_s`` seconds of the injected clock and reloads everything when the version moved;
:meth:`ToggleSnapshot.invalidate` forces the reload on the next check (this process's own writes).

The snapshot also holds each operation's variant assignment (``operation_variants``, written under
the same version counter): :meth:`ToggleSnapshot.serving_variant` gives a user the candidate
variant when their bucket in the assignment's own group id is within the candidate percentage, else
the live variant (:data:`~opsgate.rollout.variants.DEFAULT_VARIANT` without a row).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, select

from opsgate.clock import Clock
from opsgate.rollout.bucketing import bucket
from opsgate.rollout.errors import OperationDisabled
from opsgate.rollout.models import feature_toggle_version, feature_toggles, operation_variants, user_settings
from opsgate.rollout.variants import DEFAULT_VARIANT
from opsgate.security.rls import service_scope

DISABLED = "disabled"
KILL_SWITCH = "kill_switch"
NOT_IN_ROLLOUT = "not_in_rollout"
OPT_IN_REQUIRED = "opt_in_required"
ENABLED = "enabled"


@dataclass(frozen=True, slots=True)
class Toggle:
    """One ``feature_toggles`` row. ``rollout_percentage`` is 0..100."""

    operation: str
    enabled: bool
    rollout_percentage: int
    group_id: str
    opt_in_required: bool
    kill_switch: bool
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, slots=True)
class VariantAssignment:
    """One ``operation_variants`` row: the ``live`` variant, the ``previous`` live one, the
    ``candidate`` (None: no variant rollout) served to ``candidate_percentage`` (0..100) of users
    by their bucket in ``group_id`` (independent of the toggle's group id)."""

    operation: str
    live: str
    previous: str | None
    candidate: str | None
    candidate_percentage: int
    group_id: str
    updated_at: datetime
    updated_by: str
    shadow_percentage: int = 0

    def serving(self, user_id: str) -> str:
        """The variant name serving ``user_id`` (sticky: a pure function of the row and the id)."""
        if self.candidate is not None and bucket(self.group_id, user_id) <= self.candidate_percentage:
            return self.candidate
        return self.live

    def shadowed(self, request_id: str) -> str | None:
        """The candidate when the call ``request_id`` is to be shadowed, else None: only while the
        candidate serves 0 % of users (the shadow stage), for the calls whose bucket of
        ``request_id`` in the group ``shadow/{operation}/{candidate}`` is within
        ``shadow_percentage`` (deterministic per call, independent of the user's bucket)."""
        if self.candidate is None or self.candidate_percentage or not self.shadow_percentage:
            return None
        group = f"shadow/{self.operation}/{self.candidate}"
        return self.candidate if bucket(group, request_id) <= self.shadow_percentage else None


@dataclass(slots=True)
class Verdict:
    """Whether ``user`` gets ``operation``: ``allowed``, the user's ``bucket`` (1..100, 0 when the
    toggle does not exist) and ``reason`` (``enabled`` or one of the refusal reasons). Read-only by
    convention: it is built on every request, and a frozen dataclass's ``__init__`` costs ~10x more."""

    operation: str
    allowed: bool
    bucket: int
    reason: str

    def explain(self) -> str:
        """A sentence for the user about their own access; names no other user."""
        return _EXPLAIN[self.reason].format(op=self.operation)


_EXPLAIN = {
    ENABLED: "{op} is enabled for your account",
    DISABLED: "{op} is not enabled",
    KILL_SWITCH: "{op} is switched off by an operator",
    NOT_IN_ROLLOUT: "{op} is being rolled out gradually and is not yet available to your account",
    OPT_IN_REQUIRED: "{op} needs your opt-in first (PUT /v1/me/settings)",
}


def evaluate(toggle: Toggle | None, operation: str, user_id: str, opted_in: bool) -> Verdict:
    """Evaluate one toggle for one user (pure; see the module docstring for the order)."""
    if toggle is None:
        return Verdict(operation, False, 0, DISABLED)
    user_bucket = bucket(toggle.group_id, user_id)
    if toggle.kill_switch:
        reason = KILL_SWITCH
    elif not toggle.enabled:
        reason = DISABLED
    elif user_bucket > toggle.rollout_percentage:
        reason = NOT_IN_ROLLOUT
    elif toggle.opt_in_required and not opted_in:
        reason = OPT_IN_REQUIRED
    else:
        return Verdict(operation, True, user_bucket, ENABLED)
    return Verdict(operation, False, user_bucket, reason)


_NOBODY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _State:
    version: int
    toggles: dict[str, Toggle]
    opt_ins: dict[str, frozenset[str]]
    variants: dict[str, VariantAssignment]


class ToggleSnapshot:
    """Every toggle and opt-in of one database, in memory; thread-safe reads, lazy refresh."""

    def __init__(self, engine: Engine, clock: Clock, *, refresh_s: float = 2.0) -> None:
        self._engine = engine
        self._clock = clock
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._state = _State(-1, {}, {}, {})
        self._next_poll = float("-inf")

    def check(self, operation: str, user_id: str) -> Verdict:
        """The :class:`Verdict` for ``user_id`` on ``operation`` from the current snapshot."""
        if self._clock.monotonic() >= self._next_poll:
            self._refresh()
        state = self._state
        return evaluate(state.toggles.get(operation), operation, user_id,
                        user_id in state.opt_ins.get(operation, _NOBODY))

    def require(self, operation: str, user_id: str) -> Verdict:
        """Like :meth:`check`, but raise :class:`OperationDisabled` (403) when refused."""
        verdict = self.check(operation, user_id)
        if not verdict.allowed:
            raise OperationDisabled(verdict.explain(), verdict.reason)
        return verdict

    def variant(self, operation: str, served: str | None = None) -> str:
        """The ``variant`` label of opsgate's Prometheus metrics for a call of ``operation``
        served by the variant named ``served`` (None: not chosen yet): ``candidate`` when that is
        the candidate of a variant rollout, else ``canary`` while the toggle admits 1-99 % of
        users, else ``stable`` (three values, whatever the variants are called). Reads the current
        snapshot, no refresh."""
        assignment = self._state.variants.get(operation)
        if served is not None and assignment is not None and assignment.candidate == served:
            return "candidate"
        toggle = self._state.toggles.get(operation)
        return "canary" if toggle is not None and 0 < toggle.rollout_percentage < 100 else "stable"

    def serving_variant(self, operation: str, user_id: str) -> str:
        """The name of the variant serving ``user_id`` for ``operation`` (refreshing first if due):
        the candidate when the user's bucket is within its percentage, else the live variant."""
        if self._clock.monotonic() >= self._next_poll:
            self._refresh()
        assignment = self._state.variants.get(operation)
        return DEFAULT_VARIANT if assignment is None else assignment.serving(user_id)

    def shadow_variant(self, operation: str, request_id: str) -> str | None:
        """The candidate to shadow the call ``request_id`` of ``operation`` with, or None
        (:meth:`VariantAssignment.shadowed`). Reads the current snapshot, no refresh: the call
        already refreshed it when its variant was chosen."""
        assignment = self._state.variants.get(operation)
        return None if assignment is None else assignment.shadowed(request_id)

    def assignments(self) -> dict[str, VariantAssignment]:
        """The current variant assignments by operation (refreshing first if due)."""
        if self._clock.monotonic() >= self._next_poll:
            self._refresh()
        return dict(self._state.variants)

    def toggles(self) -> dict[str, Toggle]:
        """The current toggles by operation (refreshing first if due)."""
        if self._clock.monotonic() >= self._next_poll:
            self._refresh()
        return dict(self._state.toggles)

    def invalidate(self) -> None:
        """Force a version check on the next evaluation (after a write by this process)."""
        self._next_poll = float("-inf")

    def _refresh(self) -> None:
        with self._lock:
            if self._clock.monotonic() < self._next_poll:
                return
            with service_scope(self._engine) as conn:  # every user's opt-ins (RLS on PostgreSQL)
                version = conn.execute(select(feature_toggle_version.c.version)).scalar() or 0
                if version != self._state.version:
                    self._state = _load(conn, version)
            self._next_poll = self._clock.monotonic() + self._refresh_s


def _load(conn: Connection, version: int) -> _State:
    toggles = {row.operation: Toggle(**row._mapping) for row in conn.execute(select(feature_toggles))}
    opted: dict[str, set[str]] = {}
    query = select(user_settings.c.operation, user_settings.c.user_id).where(user_settings.c.opted_in)
    for operation, user_id in conn.execute(query):
        opted.setdefault(operation, set()).add(user_id)
    variants = {row.operation: VariantAssignment(**row._mapping) for row in conn.execute(select(operation_variants))}
    return _State(version, toggles, {op: frozenset(users) for op, users in opted.items()}, variants)
