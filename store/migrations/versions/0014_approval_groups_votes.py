"""approvals: groups of approvers, each person's decision, notices sent, decision links used

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approval_groups",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False, index=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("uq_approval_group_owner_name", "approval_groups", ["owner", "name"], unique=True)
    op.create_table(
        "approval_votes",
        sa.Column("approval_id", sa.String(200), primary_key=True),
        sa.Column("decided_by", sa.String(128), primary_key=True),
        sa.Column("run_id", sa.String(36), nullable=False, index=True),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "approval_notices",
        sa.Column("approval_id", sa.String(200), primary_key=True),
        sa.Column("notice", sa.String(32), primary_key=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "approval_link_uses",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("approval_id", sa.String(200), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approval_link_uses")
    op.drop_table("approval_notices")
    op.drop_table("approval_votes")
    op.drop_index("uq_approval_group_owner_name", table_name="approval_groups")
    op.drop_table("approval_groups")
