"""node executions: every node execution of a run, its resolved input, output, error and logs

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_executions",
        sa.Column("execution_id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(200), primary_key=True),
        sa.Column("path", sa.String(200), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("input", sa.JSON, nullable=True),
        sa.Column("output", sa.JSON, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("restored", sa.Boolean, nullable=False),
        sa.Column("logs", sa.JSON, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer, nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_index("ix_node_executions_order", "node_executions", ["execution_id", "started_at", "node_id", "path"])
    # A rerun's or node test's journal has an id of its own: its dead letters name the execution.
    op.add_column("node_outcomes", sa.Column("execution_id", sa.String(36), nullable=True))


def downgrade() -> None:
    op.drop_column("node_outcomes", "execution_id")
    op.drop_index("ix_node_executions_order", "node_executions")
    op.drop_table("node_executions")
