"""identity: memberships, scoped tokens, external identities, quotas, registrations, audit

Revision ID: 0004
Revises: 0003a
Create Date: 2026-11-26

Data kept as it behaved before:

* every user becomes a member of its default project; ``users.role = 'admin'`` becomes
  ``cloud_admin`` and the ``admin`` role in that project;
* images marked ``private`` were visible to their whole project: they become ``project``
  (``private`` now means the owner and the project's admins only);
* existing projects get a quota row without limits (new projects get the defaults);
* existing tokens (no ``token_id``) keep working as unscoped tokens.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs (no batch copy: on SQLite a copied ``users`` table could not be
    # dropped while other tables point at it)
    _new_tables()
    op.add_column("api_tokens", sa.Column("token_id", sa.String(length=12), nullable=True))
    op.add_column("api_tokens", sa.Column("scopes", sa.String(length=400), nullable=True))
    op.add_column("api_tokens", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "api_tokens",
        sa.Column("created_via", sa.String(length=16), nullable=False, server_default=""),
    )
    op.create_index(op.f("ix_api_tokens_token_id"), "api_tokens", ["token_id"], unique=True)
    op.add_column(
        "instances", sa.Column("lifetime_warned_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "projects", sa.Column("description", sa.Text(), nullable=False, server_default="")
    )
    op.add_column("projects", sa.Column("max_instance_lifetime", sa.Integer(), nullable=True))
    op.add_column(
        "users", sa.Column("cloud_admin", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("users", sa.Column("password_hash", sa.String(length=255), nullable=True))
    op.add_column(
        "users", sa.Column("email", sa.String(length=254), nullable=False, server_default="")
    )
    op.add_column(
        "users", sa.Column("full_name", sa.String(length=200), nullable=False, server_default="")
    )
    op.add_column(
        "users", sa.Column("status", sa.String(length=16), nullable=False, server_default="active")
    )
    _carry_over_data()


def _new_tables() -> None:
    op.create_table(
        "project_members",
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id", "user_id"),
    )
    op.create_index(
        op.f("ix_project_members_user_id"), "project_members", ["user_id"], unique=False
    )
    op.create_table(
        "user_identities",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("subject", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "subject", name="uq_user_identities_subject"),
    )
    op.create_index(
        op.f("ix_user_identities_user_id"), "user_identities", ["user_id"], unique=False
    )
    op.create_table(
        "quotas",
        sa.Column("scope_type", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=36), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope_type", "scope_id"),
    )
    op.create_table(
        "registrations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("full_name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("email_token_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("decided_by", sa.String(length=36), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email_token_hash"),
    )
    op.create_index(op.f("ix_registrations_username"), "registrations", ["username"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("credential", sa.String(length=1024), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_audit_log_user_id"), "audit_log", ["user_id"], unique=False)


def _carry_over_data() -> None:
    op.execute("UPDATE users SET cloud_admin = (role = 'admin')")
    op.execute(
        "INSERT INTO project_members (project_id, user_id, role, created_at) "
        "SELECT default_project_id, id, "
        "CASE WHEN role = 'admin' THEN 'admin' ELSE 'member' END, created_at FROM users"
    )
    op.execute("UPDATE images SET visibility = 'project' WHERE visibility = 'private'")
    op.execute(
        "INSERT INTO quotas (scope_type, scope_id, limits, version) "
        "SELECT 'project', id, '{}', 0 FROM projects"
    )


def downgrade() -> None:
    op.execute("UPDATE images SET visibility = 'private' WHERE visibility = 'project'")
    with op.batch_alter_table("users") as batch:
        for column in ("status", "full_name", "email", "password_hash", "cloud_admin"):
            batch.drop_column(column)
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("max_instance_lifetime")
        batch.drop_column("description")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("lifetime_warned_at")
    op.drop_index(op.f("ix_api_tokens_token_id"), table_name="api_tokens")
    with op.batch_alter_table("api_tokens") as batch:
        for column in ("created_via", "revoked_at", "scopes", "token_id"):
            batch.drop_column(column)
    op.drop_index(op.f("ix_audit_log_user_id"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_registrations_username"), table_name="registrations")
    op.drop_table("registrations")
    op.drop_table("quotas")
    op.drop_index(op.f("ix_user_identities_user_id"), table_name="user_identities")
    op.drop_table("user_identities")
    op.drop_index(op.f("ix_project_members_user_id"), table_name="project_members")
    op.drop_table("project_members")
