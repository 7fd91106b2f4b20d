"""Monitoring tables, on the shared :data:`opsgate.store.models.metadata` (migration ``0006``).

- ``monitoring_alerts``: the condition state of one alert group (``dedup_key``, derived from the
  rule and its labels): firing or not, since when, and the episode number (a new episode starts
  each time a cleared condition fires again).
- ``monitoring_incidents``: one incident per alert group episode (unique ``dedup_key`` +
  ``episode``): severity, state (``open`` → ``acknowledged`` → ``resolved``), escalation level,
  acknowledgement and resolution note. ``version`` guards every conditional update.
- ``monitoring_incident_events``: the timeline of each incident (state changes, notifications,
  delivery failures), each row written in the same transaction as its ledger entry.
- ``monitoring_outbox``: notifications stored before sending; unique per (``channel``,
  ``recipient``, ``notify_key``) so one event is never queued twice.
- ``monitoring_signals``: events for the worker (budget enforcement failures, rollout alerts) and
  the results of ledger verifications (``hashChainIntegrity``).
- ``monitoring_provider_status``: each serving instance's breaker state per provider.
- ``monitoring_demotions``: providers demoted by the outage rule (all instances apply them).
- ``monitoring_workers``: who leads the worker pool and its last heartbeat.

Timestamps are timezone-aware UTC; JSON columns are text.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from opsgate.store.models import metadata
from opsgate.store.types import UTCDateTime

alerts = Table(
    "monitoring_alerts",
    metadata,
    Column("dedup_key", String(255), primary_key=True),
    Column("rule", String(64), nullable=False),
    Column("labels", Text, nullable=False),
    Column("firing", Boolean, nullable=False),
    Column("severity", String(4)),
    Column("episode", Integer, nullable=False),
    Column("since", UTCDateTime(), nullable=False),
    Column("value", String(64)),
    Column("updated_at", UTCDateTime(), nullable=False),
)

incidents = Table(
    "monitoring_incidents",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("dedup_key", String(255), nullable=False),
    Column("episode", Integer, nullable=False),
    Column("rule", String(64), nullable=False),
    Column("severity", String(4), nullable=False),
    Column("title", String(255), nullable=False),
    Column("summary", Text, nullable=False),
    Column("labels", Text, nullable=False),
    Column("pages", Boolean, nullable=False),
    Column("state", String(16), nullable=False),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("acknowledged_at", UTCDateTime()),
    Column("acknowledged_by", String(128)),
    Column("resolved_at", UTCDateTime()),
    Column("resolved_by", String(128)),
    Column("resolution_note", Text),
    Column("escalation_level", Integer, nullable=False),
    Column("next_escalation_at", UTCDateTime()),
    Column("last_notified_at", UTCDateTime(), nullable=False),
    Column("repeats", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("dedup_key", "episode", name="uq_monitoring_incidents_key_episode"),
)
Index("ix_monitoring_incidents_state", incidents.c.state, incidents.c.next_escalation_at)

incident_events = Table(
    "monitoring_incident_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(16), ForeignKey("monitoring_incidents.id"), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("detail", Text, nullable=False),
)
Index("ix_monitoring_incident_events_incident", incident_events.c.incident_id, incident_events.c.id)

outbox = Table(
    "monitoring_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("notify_key", String(255), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("recipient", String(255), nullable=False),
    Column("incident_id", String(16)),
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(64)),
    Column("claim_expires_at", UTCDateTime()),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
    UniqueConstraint("channel", "recipient", "notify_key", name="uq_monitoring_outbox_event"),
)
Index("ix_monitoring_outbox_due", outbox.c.state, outbox.c.next_attempt_at)

signals = Table(
    "monitoring_signals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("severity", String(4)),
    Column("ok", Boolean, nullable=False),
    Column("detail", Text, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("handled_at", UTCDateTime()),
)
Index("ix_monitoring_signals_kind_at", signals.c.kind, signals.c.at)

provider_status = Table(
    "monitoring_provider_status",
    metadata,
    Column("instance", String(64), primary_key=True),
    Column("provider", String(32), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("unavailable_since", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
)

demotions = Table(
    "monitoring_demotions",
    metadata,
    Column("provider", String(32), primary_key=True),
    Column("since", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False),
)

workers = Table(
    "monitoring_workers",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("since", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
)
