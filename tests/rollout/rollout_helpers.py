"""Helpers shared by the rollout tests: canary controller states at a fixed time
(:data:`NOW`, :func:`state_of`) and the ledger entries a rollout service wrote
(:func:`ledger_kinds`)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from opsgate.ledger.entry import ENVELOPE_KEYS
from opsgate.rollout.controller import Plan, RolloutState, State
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


def ledger_kinds(engine: Engine) -> list[tuple[str, dict]]:
    with engine.connect() as conn:
        bodies = conn.execute(select(ledger_entries.c.body).order_by(ledger_entries.c.seq)).scalars()
        entries = [json.loads(b) for b in bodies]
    return [(e["kind"], {k: v for k, v in e.items() if k not in ENVELOPE_KEYS}) for e in entries]
