"""requests and responses tables

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=False),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("headers", JSONB(), nullable=False),
        sa.Column("body", JSONB(), nullable=True),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("key_alias", sa.String(255), nullable=True),
        sa.Column("user", sa.String(255), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
        sa.UniqueConstraint("request_id", name="uq_requests_request_id"),
    )
    op.create_index("ix_requests_model", "requests", ["model"])
    op.create_index("ix_requests_created_at", "requests", ["created_at"])
    op.create_table(
        "responses",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("request_id_fk", sa.BigInteger(), nullable=False),
        sa.Column("response_body", JSONB(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Numeric(10, 2), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("tokens_used", sa.Integer(), nullable=True),
        sa.Column("cost", sa.Numeric(12, 6), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_responses"),
        sa.ForeignKeyConstraint(
            ["request_id_fk"],
            ["requests.id"],
            name="fk_responses_request_id_fk_requests",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_responses_request_id_fk", "responses", ["request_id_fk"])


def downgrade() -> None:
    op.drop_table("responses")
    op.drop_table("requests")
