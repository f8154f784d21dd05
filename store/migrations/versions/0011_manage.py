"""workflows a frontend manages: description, tags and status; the audit log; list indexes

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflows") as batch:
        batch.add_column(sa.Column("description", sa.String(2000), nullable=False, server_default=""))
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="active"))
        # The schedules an archived (or draft) workflow paused in Prefect, resumed when it is active again.
        batch.add_column(sa.Column("paused_schedules", sa.JSON(), nullable=True))
    op.create_table(
        "workflow_tags",
        sa.Column("workflow_id", sa.String(36), sa.ForeignKey("workflows.id"), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_workflow_tags_tag", "workflow_tags", ["tag", "workflow_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(255), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    # Keyset pages: (owner, sort key, id) serves the owner's newest-first page and its filters.
    op.create_index("ix_audit_owner_at", "audit_log", ["owner", "at", "id"])
    op.create_index("ix_audit_owner_target", "audit_log", ["owner", "target_id", "at"])
    op.create_index("ix_audit_owner_action", "audit_log", ["owner", "action", "at"])
    op.create_index("ix_executions_owner_created", "executions", ["owner", "created_at", "id"])
    op.create_index("ix_executions_owner_workflow_created", "executions", ["owner", "workflow_id", "created_at"])
    op.create_index("ix_executions_owner_status_created", "executions", ["owner", "status", "created_at"])
    op.create_index("ix_executions_owner_trigger_created", "executions", ["owner", "trigger_type", "created_at"])
    op.create_index("ix_workflows_owner_created", "workflows", ["owner", "created_at", "id"])
    op.create_index("ix_node_outcomes_owner_letters", "node_outcomes", ["owner", "dead_letter", "ended_at"])


def downgrade() -> None:
    op.drop_index("ix_node_outcomes_owner_letters", table_name="node_outcomes")
    op.drop_index("ix_workflows_owner_created", table_name="workflows")
    for name in ("trigger", "status", "workflow", ""):
        index = f"ix_executions_owner_{name}_created" if name else "ix_executions_owner_created"
        op.drop_index(index, table_name="executions")
    for name in ("ix_audit_owner_action", "ix_audit_owner_target", "ix_audit_owner_at"):
        op.drop_index(name, table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_workflow_tags_tag", table_name="workflow_tags")
    op.drop_table("workflow_tags")
    with op.batch_alter_table("workflows") as batch:
        batch.drop_column("paused_schedules")
        batch.drop_column("status")
        batch.drop_column("description")
