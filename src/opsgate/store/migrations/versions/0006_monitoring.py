"""monitoring: alerts, incidents and their timeline, notification outbox, signals, provider
status and demotions, worker leadership

Revision ID: 0006
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0001"
branch_labels = ("monitoring",)
depends_on = None


def upgrade() -> None:
    op.create_table("monitoring_alerts",
    sa.Column("dedup_key", sa.String(length=255), nullable=False),
    sa.Column("rule", sa.String(length=64), nullable=False),
    sa.Column("labels", sa.Text(), nullable=False),
    sa.Column("firing", sa.Boolean(), nullable=False),
    sa.Column("severity", sa.String(length=4), nullable=True),
    sa.Column("episode", sa.Integer(), nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("value", sa.String(length=64), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("dedup_key")
    )
    op.create_table("monitoring_demotions",
    sa.Column("provider", sa.String(length=32), nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("provider")
    )
    op.create_table("monitoring_incidents",
    sa.Column("id", sa.String(length=16), nullable=False),
    sa.Column("dedup_key", sa.String(length=255), nullable=False),
    sa.Column("episode", sa.Integer(), nullable=False),
    sa.Column("rule", sa.String(length=64), nullable=False),
    sa.Column("severity", sa.String(length=4), nullable=False),
    sa.Column("title", sa.String(length=255), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("labels", sa.Text(), nullable=False),
    sa.Column("pages", sa.Boolean(), nullable=False),
    sa.Column("state", sa.String(length=16), nullable=False),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("acknowledged_by", sa.String(length=128), nullable=True),
    sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("resolved_by", sa.String(length=128), nullable=True),
    sa.Column("resolution_note", sa.Text(), nullable=True),
    sa.Column("escalation_level", sa.Integer(), nullable=False),
    sa.Column("next_escalation_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_notified_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("repeats", sa.Integer(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("dedup_key", "episode", name="uq_monitoring_incidents_key_episode")
    )
    op.create_index("ix_monitoring_incidents_state", "monitoring_incidents", ["state", "next_escalation_at"], unique=False)
    op.create_table("monitoring_outbox",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("notify_key", sa.String(length=255), nullable=False),
    sa.Column("channel", sa.String(length=16), nullable=False),
    sa.Column("recipient", sa.String(length=255), nullable=False),
    sa.Column("incident_id", sa.String(length=16), nullable=True),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("state", sa.String(length=16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("claimed_by", sa.String(length=64), nullable=True),
    sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_status", sa.Integer(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("channel", "recipient", "notify_key", name="uq_monitoring_outbox_event")
    )
    op.create_index("ix_monitoring_outbox_due", "monitoring_outbox", ["state", "next_attempt_at"], unique=False)
    op.create_table("monitoring_provider_status",
    sa.Column("instance", sa.String(length=64), nullable=False),
    sa.Column("provider", sa.String(length=32), nullable=False),
    sa.Column("state", sa.String(length=16), nullable=False),
    sa.Column("unavailable_since", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("instance", "provider")
    )
    op.create_table("monitoring_signals",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("kind", sa.String(length=32), nullable=False),
    sa.Column("subject", sa.String(length=128), nullable=False),
    sa.Column("severity", sa.String(length=4), nullable=True),
    sa.Column("ok", sa.Boolean(), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_monitoring_signals_kind_at", "monitoring_signals", ["kind", "at"], unique=False)
    op.create_table("monitoring_workers",
    sa.Column("name", sa.String(length=32), nullable=False),
    sa.Column("holder", sa.String(length=128), nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("name")
    )
    op.create_table("monitoring_incident_events",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("incident_id", sa.String(length=16), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(length=32), nullable=False),
    sa.Column("actor", sa.String(length=128), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(["incident_id"], ["monitoring_incidents.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_monitoring_incident_events_incident", "monitoring_incident_events", ["incident_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_monitoring_incident_events_incident", table_name="monitoring_incident_events")
    op.drop_table("monitoring_incident_events")
    op.drop_table("monitoring_workers")
    op.drop_index("ix_monitoring_signals_kind_at", table_name="monitoring_signals")
    op.drop_table("monitoring_signals")
    op.drop_table("monitoring_provider_status")
    op.drop_index("ix_monitoring_outbox_due", table_name="monitoring_outbox")
    op.drop_table("monitoring_outbox")
    op.drop_index("ix_monitoring_incidents_state", table_name="monitoring_incidents")
    op.drop_table("monitoring_incidents")
    op.drop_table("monitoring_demotions")
    op.drop_table("monitoring_alerts")
