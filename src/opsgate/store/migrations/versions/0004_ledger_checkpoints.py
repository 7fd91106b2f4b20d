"""ledger: checkpoints, anchor records and state, recoveries; append-only triggers

Revision ID: 0004
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from opsgate.ledger.guards import drop_triggers, install_triggers

revision = "0004"
down_revision = "0001"
branch_labels = ("ledger",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("note", sa.LargeBinary(), nullable=False),
        sa.Column("frontier", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("size"),
    )
    op.create_table(
        "ledger_anchor_records",
        sa.Column("anchor", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("reference", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("anchor", "size"),
    )
    op.create_table(
        "ledger_anchor_state",
        sa.Column("anchor", sa.String(length=64), nullable=False),
        sa.Column("anchored_size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("anchor"),
    )
    op.create_table(
        "ledger_recoveries",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("intent_seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    install_triggers(op.get_bind())


def downgrade() -> None:
    drop_triggers(op.get_bind())
    op.drop_table("ledger_recoveries")
    op.drop_table("ledger_anchor_state")
    op.drop_table("ledger_anchor_records")
    op.drop_table("ledger_checkpoints")
