"""Count lost workers apart from attempts; remember when a job's message was last sent.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("specserve_trainer_jobs") as batch:
        batch.add_column(sa.Column("lost", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("enqueued_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("specserve_trainer_jobs") as batch:
        batch.drop_column("enqueued_at")
        batch.drop_column("lost")
