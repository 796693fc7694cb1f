"""operation targets: the open operations an agent report may finish, found by index; an
index of the instances migrating

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    targets = op.create_table(
        "operation_targets",
        sa.Column("target_id", sa.String(length=36), nullable=False),
        sa.Column("operation_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["operation_id"], ["operations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("target_id", "operation_id"),
    )
    # the instance operations still running when the controller was upgraded
    rows = op.get_bind().execute(
        sa.text(
            "SELECT id, target_ids FROM operations "
            "WHERE status = 'running' AND target_type = 'instance'"
        )
    )
    pairs = [
        {"target_id": str(target), "operation_id": op_id}
        for op_id, ids in rows
        for target in (json.loads(ids) if isinstance(ids, str) else ids or [])
    ]
    if pairs:
        op.bulk_insert(targets, pairs)
    op.create_index(
        "ix_instances_migrating",
        "instances",
        ["id"],
        postgresql_where=sa.text("migration IS NOT NULL"),
        sqlite_where=sa.text("migration IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_instances_migrating", table_name="instances")
    op.drop_table("operation_targets")
