"""node outcomes: what a run executed again restores, and dead letters

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_outcomes",
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("run_id", sa.String(255), primary_key=True),
        sa.Column("node_id", sa.String(200), primary_key=True),
        sa.Column("path", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(120), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("workflow_id", sa.String(36), nullable=True, index=True),
        sa.Column("owner", sa.String(128), nullable=True, index=True),
        sa.Column("dead_letter", sa.Boolean, nullable=False, index=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("node_outcomes")
