"""large outputs: node outputs over the event limit, kept here instead of Prefect's result storage

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "large_outputs",
        sa.Column("execution_id", sa.String(36), primary_key=True),
        sa.Column("ref", sa.String(32), primary_key=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("large_outputs")
