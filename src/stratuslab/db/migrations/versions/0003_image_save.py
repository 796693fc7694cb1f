"""image save: source instance, draft metadata, status reason

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("source_instance_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("metadata_draft", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("status_reason", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("status_reason")
        batch.drop_column("metadata_draft")
        batch.drop_column("source_instance_id")
