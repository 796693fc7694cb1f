"""networks: networks, lease history, security groups and rules, instance NICs, port forwards

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("address_class", sa.String(length=8), nullable=False),
        sa.Column("driver", sa.String(length=8), nullable=False),
        sa.Column("cidr4", sa.String(length=18), nullable=True),
        sa.Column("gateway4", sa.String(length=15), nullable=True),
        sa.Column("pools", sa.JSON(), nullable=False),
        sa.Column("cidr6", sa.String(length=43), nullable=True),
        sa.Column("gateway6", sa.String(length=39), nullable=True),
        sa.Column("dns", sa.JSON(), nullable=False),
        sa.Column("mtu", sa.Integer(), nullable=True),
        sa.Column("uplink", sa.String(length=15), nullable=True),
        sa.Column("vlan", sa.Integer(), nullable=True),
        sa.Column("vni", sa.Integer(), nullable=True),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("vni"),
    )
    op.create_index(op.f("ix_networks_project_id"), "networks", ["project_id"], unique=False)
    op.create_table(
        "network_leases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("network_name", sa.String(length=63), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("instance_name", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("ipv4", sa.String(length=15), nullable=True),
        sa.Column("ipv6", sa.String(length=39), nullable=True),
        _ts("since"),
        _ts("until", nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("network_id", "instance_id", "ipv4"):
        op.create_index(
            op.f(f"ix_network_leases_{column}"), "network_leases", [column], unique=False
        )
    op.create_table(
        "security_groups",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_security_groups_name"),
    )
    op.create_index(
        op.f("ix_security_groups_project_id"), "security_groups", ["project_id"], unique=False
    )
    op.create_table(
        "security_rules",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("port_min", sa.Integer(), nullable=True),
        sa.Column("port_max", sa.Integer(), nullable=True),
        sa.Column("remote_cidr", sa.String(length=43), nullable=True),
        sa.Column("remote_group_id", sa.String(length=36), nullable=True),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["group_id"], ["security_groups.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_security_rules_group_id"), "security_rules", ["group_id"], unique=False
    )
    _nics_and_forwards()


def _nics_and_forwards() -> None:
    op.create_table(
        "instance_nics",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("ipv4", sa.String(length=15), nullable=True),
        sa.Column("ipv6", sa.String(length=39), nullable=True),
        sa.Column("security_group_id", sa.String(length=36), nullable=True),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"]),
        sa.ForeignKeyConstraint(["security_group_id"], ["security_groups.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mac"),
        sa.UniqueConstraint("instance_id", "index", name="uq_instance_nics_index"),
        sa.UniqueConstraint("network_id", "ipv4", name="uq_instance_nics_ipv4"),
        sa.UniqueConstraint("network_id", "ipv6", name="uq_instance_nics_ipv6"),
    )
    for column in ("instance_id", "network_id", "security_group_id"):
        op.create_index(op.f(f"ix_instance_nics_{column}"), "instance_nics", [column], unique=False)
    op.create_table(
        "port_forwards",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("nic_id", sa.String(length=36), nullable=False),
        sa.Column("host_id", sa.String(length=36), nullable=False),
        sa.Column("protocol", sa.String(length=3), nullable=False),
        sa.Column("host_port", sa.Integer(), nullable=False),
        sa.Column("target_port", sa.Integer(), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["nic_id"], ["instance_nics.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("host_id", "protocol", "host_port", name="uq_port_forwards_host_port"),
    )
    op.create_index(
        op.f("ix_port_forwards_instance_id"), "port_forwards", ["instance_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("port_forwards")
    op.drop_table("instance_nics")
    op.drop_table("security_rules")
    op.drop_table("security_groups")
    op.drop_table("network_leases")
    op.drop_table("networks")
