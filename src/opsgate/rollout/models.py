"""Rollout tables on the shared ``opsgate.store.models.metadata`` (migration 0003).

- ``feature_toggles``: one row per operation (the seed's table name); ``rollout_percentage`` 0..100,
  ``group_id`` the Unleash group id of the bucketing hash, ``kill_switch`` overrides everything.
- ``feature_toggle_version``: one row (``id`` = 1) whose ``version`` every toggle or opt-in write
  increments in the same transaction, so each process can refresh its in-memory snapshot cheaply.
- ``user_settings``: a user's opt-in per operation.
- ``rollouts``: one canary rollout of a set of operations; ``plan`` and ``operations`` are JSON text;
  ``variant`` names the candidate variant a variant rollout releases (its one operation stays on).
- ``operation_variants`` (migration 0009): per operation, the ``live`` variant, the ``previous``
  live one (restored by a rollback after promotion), the ``candidate`` and the percentage of users
  (by their bucket in ``group_id``) it serves. No row: ``default`` is live, no candidate. Writes
  increment ``feature_toggle_version`` like toggle writes, so every process's snapshot follows.
- ``rollouts.shadow_percent`` / ``operation_variants.shadow_percentage`` (migration 0011): the
  share of the operation's live calls also sent to the candidate while it serves 0 % of users
  (a variant rollout's shadow stage).
- ``shadow_calls`` (migration 0011): one row per sampled shadow call: ``status`` ``ok``,
  ``error`` or ``refused`` (the ``shadow`` budget had no room: never sent), whether it
  ``agreed`` with the live answer, and both calls' cost in micro-USD.
- ``rollout_decisions``: the rollout history, one row per controller decision with its numbers
  (JSON of integers), written in the same transaction as the decision's ledger entry.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    text,
)

from opsgate.store.models import metadata
from opsgate.store.types import UTCDateTime

feature_toggles = Table(
    "feature_toggles",
    metadata,
    Column("operation", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("rollout_percentage", Integer, nullable=False),
    Column("group_id", String(128), nullable=False),
    Column("opt_in_required", Boolean, nullable=False),
    Column("kill_switch", Boolean, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("updated_by", String(128), nullable=False),
)

feature_toggle_version = Table(
    "feature_toggle_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)

user_settings = Table(
    "user_settings",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("operation", String(64), primary_key=True),
    Column("opted_in", Boolean, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("operations", Text, nullable=False),
    Column("plan", Text, nullable=False),
    Column("state", String(24), nullable=False),
    Column("stage_index", Integer, nullable=False),
    Column("stage_started_at", UTCDateTime(), nullable=False),
    Column("paused_since", UTCDateTime()),
    Column("paused_s", Integer, nullable=False),
    Column("check_due_at", UTCDateTime()),
    Column("rolled_back_at", UTCDateTime()),
    Column("reason", Text),
    Column("banner", Text),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("variant", String(48)),
    Column("shadow_percent", Integer),  # migration 0011: the shadow stage's share of live calls
)
Index("ix_rollouts_state", rollouts.c.state)

operation_variants = Table(
    "operation_variants",
    metadata,
    Column("operation", String(64), primary_key=True),
    Column("live", String(48), nullable=False),
    Column("previous", String(48)),
    Column("candidate", String(48)),
    Column("candidate_percentage", Integer, nullable=False),
    Column("group_id", String(128), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("updated_by", String(128), nullable=False),
    Column("shadow_percentage", Integer, nullable=False, default=0, server_default=text("0")),
)

rollout_decisions = Table(
    "rollout_decisions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("rollout_id", BigInteger, ForeignKey("rollouts.id"), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("event", String(24), nullable=False),
    Column("action", String(24), nullable=False),
    Column("state_before", String(24), nullable=False),
    Column("state_after", String(24), nullable=False),
    Column("stage_index", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("numbers", Text, nullable=False),
    Column("actor", String(128), nullable=False),
)
Index("ix_rollout_decisions_rollout", rollout_decisions.c.rollout_id, rollout_decisions.c.id)

shadow_calls = Table(
    "shadow_calls",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("live_request_id", String(64), nullable=False),
    Column("operation", String(64), nullable=False),
    Column("variant", String(48), nullable=False),
    Column("status", String(16), nullable=False),
    Column("agreed", Boolean, nullable=False),
    Column("live_cost_micro_usd", BigInteger, nullable=False),
    Column("shadow_cost_micro_usd", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)
Index("ix_shadow_calls_operation_created", shadow_calls.c.operation, shadow_calls.c.created_at)
