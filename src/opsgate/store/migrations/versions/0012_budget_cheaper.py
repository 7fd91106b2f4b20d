"""Cheaper before refusing (issue 16, items 4-5): budgets.on_exhausted, ai_operation_log.degraded,
budget_outcomes (the calls each budget refused or degraded)

Revision ID: 0012
Revises: 0010, 0002 (it needs both: the log and attempts, the budgets)
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = ("0010", "0002")
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("budgets") as batch:
        batch.add_column(sa.Column("on_exhausted", sa.String(length=8), nullable=False,
                                   server_default="refuse"))
    with op.batch_alter_table("ai_operation_log") as batch:
        batch.add_column(sa.Column("degraded", sa.Boolean(), nullable=True))
    op.create_table(
        "budget_outcomes",
        sa.Column("request_id", sa.String(length=64), primary_key=True),
        sa.Column("budget_id", sa.Integer(), sa.ForeignKey("budgets.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("outcome", sa.String(length=16), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_budget_outcomes_budget_created", "budget_outcomes",
                    ["budget_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_budget_outcomes_budget_created", "budget_outcomes")
    op.drop_table("budget_outcomes")
    with op.batch_alter_table("ai_operation_log") as batch:
        batch.drop_column("degraded")
    with op.batch_alter_table("budgets") as batch:
        batch.drop_column("on_exhausted")
