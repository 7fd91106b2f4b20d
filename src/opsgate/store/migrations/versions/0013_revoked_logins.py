"""Revoked logins (tester-priv F5): an index on refresh_tokens.revoked_at, for the range read every
process makes every second of the logins revoked within the access-token lifetime

Revision ID: 0013
Revises: 0005 (the security branch)
"""

from alembic import op

revision = "0013"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_refresh_tokens_revoked", "refresh_tokens", ["revoked_at"])


def downgrade() -> None:
    op.drop_index("ix_refresh_tokens_revoked", table_name="refresh_tokens")
