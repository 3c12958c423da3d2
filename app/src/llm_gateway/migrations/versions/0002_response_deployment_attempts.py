"""which deployment answered, and after how many attempts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Both columns are nullable with no default: adding them is a catalog-only change (no table
rewrite, a brief lock), so it runs while the gateways keep writing. Rows written before
it, and rows replayed from an older spool, have NULL in both.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("responses", sa.Column("deployment", sa.String(255), nullable=True))
    op.add_column("responses", sa.Column("attempts", sa.SmallInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("responses", "attempts")
    op.drop_column("responses", "deployment")
