"""security event counts: per UTC day, kind and reason (opsgate.security.counts)

Revision ID: 0007
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0001"
branch_labels = ("security_counts",)
depends_on = None


def upgrade() -> None:
    op.create_table("security_event_counts",
    sa.Column("day", sa.Date(), nullable=False),
    sa.Column("kind", sa.String(length=32), nullable=False),
    sa.Column("reason", sa.String(length=32), nullable=False),
    sa.Column("count", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("day", "kind", "reason")
    )


def downgrade() -> None:
    op.drop_table("security_event_counts")
