"""shadow calls (issue 17, item 4): a variant rollout's shadow share, the share the assignment
shadows, the operation log's ``shadow`` mark, and one ``shadow_calls`` row per sampled call

Revision ID: 0011
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("shadow_percent", sa.Integer(), nullable=True))
    with op.batch_alter_table("operation_variants") as batch:
        batch.add_column(sa.Column("shadow_percentage", sa.Integer(), nullable=False,
                                   server_default=sa.text("0")))
    with op.batch_alter_table("ai_operation_log") as batch:
        batch.add_column(sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "shadow_calls",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("live_request_id", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("variant", sa.String(length=48), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("agreed", sa.Boolean(), nullable=False),
        sa.Column("live_cost_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("shadow_cost_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_shadow_calls_operation_created", "shadow_calls", ["operation", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_shadow_calls_operation_created", table_name="shadow_calls")
    op.drop_table("shadow_calls")
    with op.batch_alter_table("ai_operation_log") as batch:
        batch.drop_column("shadow")
    with op.batch_alter_table("operation_variants") as batch:
        batch.drop_column("shadow_percentage")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("shadow_percent")
