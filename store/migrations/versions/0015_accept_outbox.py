"""executions: runs accepted before their flow run exists (the API's outbox, api/outbox.py)

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("flow_run_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("start_request", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("idempotency_key", sa.String(400), nullable=True))
        batch.add_column(sa.Column("create_after", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("create_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.create_unique_constraint("uq_executions_flow_run_id", ["flow_run_id"])
        batch.create_unique_constraint("uq_executions_idempotency_key", ["idempotency_key"])
        batch.create_index("ix_executions_create_after", ["create_after"])
    # Every run recorded so far was its flow run.
    op.execute("UPDATE executions SET flow_run_id = id")


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_index("ix_executions_create_after")
        batch.drop_constraint("uq_executions_idempotency_key", type_="unique")
        batch.drop_constraint("uq_executions_flow_run_id", type_="unique")
        batch.drop_column("create_attempts")
        batch.drop_column("create_after")
        batch.drop_column("idempotency_key")
        batch.drop_column("start_request")
        batch.drop_column("flow_run_id")
