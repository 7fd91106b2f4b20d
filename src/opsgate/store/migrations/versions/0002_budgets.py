"""budgets, reservations and cost reconciliations

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('budgets',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('operation', sa.String(length=64), nullable=False),
    sa.Column('period', sa.String(length=8), nullable=False),
    sa.Column('limit_micro_usd', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_id', 'operation', 'period', name='uq_budgets_scope_period')
    )
    op.create_table('budget_counters',
    sa.Column('budget_id', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('spent_micro_usd', sa.BigInteger(), nullable=False),
    sa.Column('reserved_micro_usd', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['budget_id'], ['budgets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('budget_id', 'period_start')
    )
    op.create_table('budget_reservations',
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('budget_id', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('worst_micro_usd', sa.BigInteger(), nullable=False),
    sa.Column('actual_micro_usd', sa.BigInteger(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['budget_id'], ['budgets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('request_id', 'budget_id')
    )
    op.create_index('ix_budget_reservations_state_expires', 'budget_reservations',
                    ['state', 'expires_at'], unique=False)
    op.create_table('cost_reconciliations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('invoice_name', sa.String(length=255), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('tracked_micro_usd', sa.BigInteger(), nullable=False),
    sa.Column('invoiced_micro_usd', sa.BigInteger(), nullable=False),
    sa.Column('difference_micro_usd', sa.BigInteger(), nullable=False),
    sa.Column('accuracy_pct', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_cost_reconciliations_run', 'cost_reconciliations', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_cost_reconciliations_run', table_name='cost_reconciliations')
    op.drop_table('cost_reconciliations')
    op.drop_index('ix_budget_reservations_state_expires', table_name='budget_reservations')
    op.drop_table('budget_reservations')
    op.drop_table('budget_counters')
    op.drop_table('budgets')
