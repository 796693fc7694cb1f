"""marketplace images on the controller; marketplace search and feed indexes

Revision ID: 0003a
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003a"
down_revision = "0003"
branch_labels = None
depends_on = None

SEARCH_COLUMNS = [
    "created", "id", "identifier", "endorser_key", "deprecated", "valid_until", "kind", "os",
    "os_arch",
]  # fmt: skip


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("marketplace_id", sa.String(length=27), nullable=True))
        batch.add_column(sa.Column("locations", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("compression", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("sha512", sa.String(length=128), nullable=True))
        batch.create_index("ix_images_marketplace_id", ["marketplace_id"])
    op.create_index("ix_marketplace_entries_search", "marketplace_entries", SEARCH_COLUMNS)
    op.create_index("ix_marketplace_entries_uploaded", "marketplace_entries", ["uploaded_at"])


def downgrade() -> None:
    op.drop_index("ix_marketplace_entries_uploaded", "marketplace_entries")
    op.drop_index("ix_marketplace_entries_search", "marketplace_entries")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_marketplace_id")
        batch.drop_column("sha512")
        batch.drop_column("compression")
        batch.drop_column("locations")
        batch.drop_column("marketplace_id")
