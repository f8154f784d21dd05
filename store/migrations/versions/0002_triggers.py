"""executions record what started them

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("trigger_type", sa.String(16), nullable=False, server_default="api"))
        batch.add_column(sa.Column("trigger", sa.JSON, nullable=False, server_default="{}"))
        batch.create_index("ix_executions_trigger_type", ["trigger_type"])


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_index("ix_executions_trigger_type")
        batch.drop_column("trigger")
        batch.drop_column("trigger_type")
