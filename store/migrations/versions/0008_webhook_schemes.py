"""webhook schemes: each hook's verification scheme and its request-to-inputs mapping

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(sa.Column("verification", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("inputs_map", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("inputs_map")
        batch.drop_column("verification")
