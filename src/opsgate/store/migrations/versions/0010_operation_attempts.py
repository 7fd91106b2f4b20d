"""ai_operation_attempts: one row per provider request a call may have been billed for (issue 16)

Existing calls are copied in as one attempt each (the provider and model the log row names, its
usage and cost, billing ``reported``), so reconciliation reads one table for old and new calls.

Revision ID: 0010
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ai_operation_attempts",
        sa.Column("request_id", sa.String(length=64), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("served_model", sa.String(length=128)),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("billing", sa.String(length=16), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_write_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_read_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ai_operation_attempts_provider_created", "ai_operation_attempts",
                    ["provider", "created_at"])
    op.execute(
        "INSERT INTO ai_operation_attempts (request_id, seq, provider, model, served_model, outcome,"
        " billing, input_tokens, output_tokens, cache_write_tokens, cache_read_tokens,"
        " cost_micro_usd, created_at)"
        " SELECT request_id, 0, provider, model, served_model, status, 'reported', input_tokens,"
        " output_tokens, cache_write_tokens, cache_read_tokens, cost_micro_usd, created_at"
        " FROM ai_operation_log WHERE provider IS NOT NULL AND model IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_ai_operation_attempts_provider_created", "ai_operation_attempts")
    op.drop_table("ai_operation_attempts")
