"""variants (issue 17): which variant of each operation is live and which is the candidate, the
variant a rollout releases, and the variant (and whether a repair request was needed) per logged call

Revision ID: 0009
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operation_variants",
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("live", sa.String(length=48), nullable=False),
        sa.Column("previous", sa.String(length=48), nullable=True),
        sa.Column("candidate", sa.String(length=48), nullable=True),
        sa.Column("candidate_percentage", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("operation"),
    )
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("variant", sa.String(length=48), nullable=True))
    with op.batch_alter_table("ai_operation_log") as batch:
        batch.add_column(sa.Column("variant", sa.String(length=48), nullable=True))
        batch.add_column(sa.Column("repaired", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ai_operation_log") as batch:
        batch.drop_column("repaired")
        batch.drop_column("variant")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("variant")
    op.drop_table("operation_variants")
