"""budgets: owners' spending caps on model calls, and what each window has spent

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False, index=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("workflow_id", sa.String(36), nullable=True),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("max_cost_usd", sa.Float, nullable=True),
        sa.Column("max_tokens", sa.BigInteger, nullable=True),
        sa.Column("on_exceed", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "budget_spend",
        sa.Column("budget_id", sa.String(36), primary_key=True),
        sa.Column("period_key", sa.String(64), primary_key=True),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("requests", sa.Integer, nullable=False, server_default="0"),
        sa.Column("in_flight", sa.Integer, nullable=False, server_default="0"),
        sa.Column("largest_cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("largest_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_spend")
    op.drop_table("budgets")
