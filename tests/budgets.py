"""Budgets for tests that hold an engine but no running ledger: :func:`ledgered_budget` sets one
the only way there is, through a ledger append (``budget.set``), as the admin ``ADMIN``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from opsgate.clock import Clock
from opsgate.ledger.writer import Ledger
from opsgate.metering.budgets import Budget, set_budget

ADMIN = "tests:admin"


def ledgered_budget(engine: Engine, clock: Clock, **fields: Any) -> Budget:
    """:func:`set_budget` with ``fields`` (``user_id``, ``operation``, ``period``,
    ``limit_micro_usd``, ``on_exhausted``) on a ledger writer opened for the one change."""
    with Ledger(engine, clock) as ledger:
        return set_budget(ledger, clock, actor=ADMIN, **fields)
