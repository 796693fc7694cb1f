"""marketplace: entries (append-only), heads, tags

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "marketplace_entries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("identifier", sa.String(length=27), nullable=False),
        sa.Column("endorser_key", sa.String(length=1024), nullable=False),
        sa.Column("endorser_email", sa.String(length=255), nullable=True),
        sa.Column("endorser_dn", sa.String(length=1024), nullable=False),
        sa.Column("endorser_issuer", sa.String(length=1024), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deprecated", sa.Text(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("os", sa.String(length=255), nullable=True),
        sa.Column("os_version", sa.String(length=255), nullable=True),
        sa.Column("os_arch", sa.String(length=255), nullable=True),
        sa.Column("title", sa.String(length=255), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("sha1", sa.String(length=40), nullable=False),
        sa.Column("metadata_bytes", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("identifier", "endorser_key", "created", name="uq_marketplace_entry"),
    )
    op.create_index(
        "ix_marketplace_entries_endorser",
        "marketplace_entries",
        ["endorser_key", "created"],
        unique=False,
    )
    op.create_index(
        op.f("ix_marketplace_entries_identifier"),
        "marketplace_entries",
        ["identifier"],
        unique=False,
    )
    op.create_table(
        "marketplace_heads",
        sa.Column("identifier", sa.String(length=27), nullable=False),
        sa.Column("endorser_key", sa.String(length=1024), nullable=False),
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["entry_id"], ["marketplace_entries.id"]),
        sa.PrimaryKeyConstraint("identifier", "endorser_key"),
        sa.UniqueConstraint("entry_id"),
    )
    op.create_table(
        "marketplace_tags",
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["entry_id"], ["marketplace_entries.id"]),
        sa.PrimaryKeyConstraint("entry_id", "tag"),
    )
    op.create_index(op.f("ix_marketplace_tags_tag"), "marketplace_tags", ["tag"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_marketplace_tags_tag"), table_name="marketplace_tags")
    op.drop_table("marketplace_tags")
    op.drop_table("marketplace_heads")
    op.drop_index(op.f("ix_marketplace_entries_identifier"), table_name="marketplace_entries")
    op.drop_index("ix_marketplace_entries_endorser", table_name="marketplace_entries")
    op.drop_table("marketplace_entries")
