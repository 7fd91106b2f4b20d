"""ai_operation_log.served_model: the model the provider says served the call (issue 13)

Revision ID: 0008
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0001"
branch_labels = ("providers",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ai_operation_log") as batch:
        batch.add_column(sa.Column("served_model", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ai_operation_log") as batch:
        batch.drop_column("served_model")
