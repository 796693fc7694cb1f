"""multi-host: host labels, overcommit ratios and state reasons; instance scheduling hints,
HA policy, migration state; indexes for keyset pagination

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("labels", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("cpu_ratio", sa.Float(), nullable=True))
        batch.add_column(sa.Column("ram_ratio", sa.Float(), nullable=True))
        batch.add_column(sa.Column("disk_ratio", sa.Float(), nullable=True))
        batch.add_column(sa.Column("state_reason", sa.Text(), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("admin_state", sa.String(length=16), nullable=False, server_default="enabled")
        )
        batch.add_column(sa.Column("migration_uri", sa.String(length=255), nullable=True))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("requirements", sa.Text(), nullable=True))
        batch.add_column(sa.Column("affinity_group", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("anti_affinity_group", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("ha_policy", sa.String(length=8), nullable=False, server_default="none")
        )
        batch.add_column(sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("migration", sa.JSON(), nullable=True))
    op.create_index("ix_instances_created", "instances", ["created_at", "id"])
    op.create_index("ix_instances_project_created", "instances", ["project_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_instances_project_created", table_name="instances")
    op.drop_index("ix_instances_created", table_name="instances")
    with op.batch_alter_table("instances") as batch:
        for name in (
            "migration",
            "pending_since",
            "ha_policy",
            "anti_affinity_group",
            "affinity_group",
            "requirements",
        ):
            batch.drop_column(name)
    with op.batch_alter_table("hosts") as batch:
        for name in (
            "migration_uri",
            "admin_state",
            "state_reason",
            "disk_ratio",
            "ram_ratio",
            "cpu_ratio",
            "labels",
        ):
            batch.drop_column(name)
