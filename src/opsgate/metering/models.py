"""Metering tables, on the shared :data:`opsgate.store.models.metadata` (migration ``0002``).

- ``budgets``: one limit per (``user_id``, ``operation``, ``period``); ``*`` in ``user_id`` or
  ``operation`` means "every user" / "every operation", so ``('*', '*')`` is the global budget.
  ``on_exhausted`` (migration ``0012``) is what a call that does not fit does: ``refuse`` (402)
  or ``cheaper`` (served by a cheaper target of its chain, degraded).
- ``budget_counters``: per budget and period start (UTC), settled ``spent_micro_usd`` and
  ``reserved_micro_usd`` still held by open reservations. Updated only by conditional UPDATEs.
- ``budget_reservations``: one row per (request, budget): the worst case held, the actual charge,
  the state (``open``, ``settled``, ``unknown_usage``, ``expired``) and when it expires.
- ``ai_operation_attempts``: one row per provider request a call may have been billed for
  (migration ``0010``): its provider, model, reported usage and cost, or, with ``billing`` =
  ``estimated``, no usage and the request's worst case (a timeout, a cut or unreadable 200).
  Reconciliation reads these rows, so an attempt is matched against the invoice of the provider
  and model that served it.
- ``budget_outcomes``: one row per (request, budget, outcome) for a call a budget refused
  (``refused``, 402) or sent to a cheaper target (``degraded``), written in the ledger
  transaction that decided it (migration ``0012``); ``opsgate budgets show`` counts them per UTC day.
- ``cost_reconciliations``: one row per (run, UTC day, model) of an invoice reconciliation.

Money is integer micro-USD; timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from opsgate.store.models import metadata
from opsgate.store.types import UTCDateTime

ANY = "*"
"""The wildcard of ``budgets.user_id`` / ``budgets.operation``."""
SHADOW = "@shadow"
"""``budgets.operation`` of the ``shadow`` scope (with ``user_id`` ``*``): the budget of a variant
rollout's shadow calls, and theirs only. No operation id starts with ``@``, so no user call
matches it."""
REFUSE, CHEAPER = "refuse", "cheaper"
"""The values of ``budgets.on_exhausted``."""
REFUSED, DEGRADED = "refused", "degraded"
"""The values of ``budget_outcomes.outcome``."""
OPEN, SETTLED, UNKNOWN_USAGE, EXPIRED = "open", "settled", "unknown_usage", "expired"
"""The values of ``budget_reservations.state``."""

budgets = Table(
    "budgets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(128), nullable=False),
    Column("operation", String(64), nullable=False),
    Column("period", String(8), nullable=False),
    Column("limit_micro_usd", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("on_exhausted", String(8), nullable=False, server_default=REFUSE),
    UniqueConstraint("user_id", "operation", "period", name="uq_budgets_scope_period"),
)

budget_counters = Table(
    "budget_counters",
    metadata,
    Column("budget_id", Integer, ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True),
    Column("period_start", UTCDateTime(), primary_key=True),
    Column("spent_micro_usd", BigInteger, nullable=False, default=0),
    Column("reserved_micro_usd", BigInteger, nullable=False, default=0),
)

budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("budget_id", Integer, ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True),
    Column("period_start", UTCDateTime(), nullable=False),
    Column("worst_micro_usd", BigInteger, nullable=False),
    Column("actual_micro_usd", BigInteger),
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("settled_at", UTCDateTime()),
)
Index("ix_budget_reservations_state_expires", budget_reservations.c.state,
      budget_reservations.c.expires_at)

budget_outcomes = Table(
    "budget_outcomes",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("budget_id", Integer, ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True),
    Column("outcome", String(16), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
)
Index("ix_budget_outcomes_budget_created", budget_outcomes.c.budget_id, budget_outcomes.c.created_at)

ai_operation_attempts = Table(
    "ai_operation_attempts",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("provider", String(32), nullable=False),
    Column("model", String(128), nullable=False),
    Column("served_model", String(128)),
    Column("outcome", String(32), nullable=False),
    Column("billing", String(16), nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("cache_write_tokens", Integer, nullable=False),
    Column("cache_read_tokens", Integer, nullable=False),
    Column("cost_micro_usd", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)
Index("ix_ai_operation_attempts_provider_created", ai_operation_attempts.c.provider,
      ai_operation_attempts.c.created_at)

cost_reconciliations = Table(
    "cost_reconciliations",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("run_id", String(32), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("invoice_name", String(255), nullable=False),
    Column("day", Date, nullable=False),
    Column("model", String(128), nullable=False),
    Column("tracked_micro_usd", BigInteger, nullable=False),
    Column("invoiced_micro_usd", BigInteger, nullable=False),
    Column("difference_micro_usd", BigInteger, nullable=False),
    Column("accuracy_pct", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)
Index("ix_cost_reconciliations_run", cost_reconciliations.c.run_id)
