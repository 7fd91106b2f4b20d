"""Helpers shared by the rollout tests: canary controller states at a fixed time
(:data:`NOW`, :func:`state_of`), the expected decision table of a controller test
(:func:`decision_table`), the ledger entries a rollout service wrote (:func:`ledger_kinds`) and
calls released together in threads (:func:`at_once`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from opsgate.ledger.entry import ENVELOPE_KEYS
from opsgate.rollout.controller import Action, Plan, RolloutState, State
from opsgate.store.models import ledger_entries

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PLAN = Plan()
DAY = timedelta(hours=24)


def state_of(name: str) -> RolloutState:
    """Each state with its stage time served (so a healthy evaluation can promote)."""
    served = NOW - DAY - timedelta(minutes=1)
    base = RolloutState(State(name), 0, served, PLAN)
    if name == "paused":
        return replace(base, paused_since=NOW - timedelta(seconds=30))
    if name == "observing":
        return replace(base, stage_index=3, stage_started_at=NOW - timedelta(hours=49))
    if name == "rolling_back":
        return replace(base, check_due_at=NOW + timedelta(minutes=2))
    return base


Row = tuple[Action, State, int]  # action, state after, stage index after


def decision_table(events: Iterable[str], active: dict[str, Row], observing: dict[str, Row]) -> dict[State, dict[str, Row]]:
    """Every state's expected row for every event: ``active`` for running, awaiting_promotion and
    paused, ``observing``; a rolling-back rollout holds until its check (advance rejected,
    rollback and kill switch ignored); a finished one ignores all but advance (rejected) and, once
    completed, rollback."""
    names = list(events)
    manual = ("advance", "rollback", "kill_switch")
    rolling_back = {e: (Action.HOLD, State.ROLLING_BACK, 0) for e in names if e not in manual} | {
        "advance": (Action.REJECT, State.ROLLING_BACK, 0),
        "rollback": (Action.IGNORE, State.ROLLING_BACK, 0),
        "kill_switch": (Action.IGNORE, State.ROLLING_BACK, 0),
    }

    def finished(state: State) -> dict[str, Row]:
        rows = {e: (Action.IGNORE, state, 0) for e in names}
        rows["advance"] = (Action.REJECT, state, 0)
        if state is State.COMPLETED:
            rows["rollback"] = (Action.ROLLBACK, State.ROLLING_BACK, 0)
        return rows

    return {
        State.RUNNING: active, State.AWAITING_PROMOTION: active, State.PAUSED: active,
        State.OBSERVING: observing, State.ROLLING_BACK: rolling_back,
        **{s: finished(s) for s in (State.ROLLED_BACK, State.ESCALATED, State.COMPLETED)},
    }


def ledger_kinds(engine: Engine) -> list[tuple[str, dict]]:
    with engine.connect() as conn:
        bodies = conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq)).scalars()
        entries = [json.loads(b) for b in bodies]
    return [(e["kind"], {k: v for k, v in e.items() if k not in ENVELOPE_KEYS}) for e in entries]


def at_once(calls: list[Callable[[], Any]]) -> tuple[list[Any], list[Exception]]:
    """Run each call in its own thread, released together; what they returned and raised."""
    barrier = threading.Barrier(len(calls))
    done: list[Any] = []
    refused: list[Exception] = []

    def run(call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            done.append(call())
        except Exception as exc:  # collected and checked by the caller
            refused.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done, refused
