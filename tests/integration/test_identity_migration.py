"""Migration 0004 keeps what users had, and matches the models."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import text

from stratuslab.api.app import build_ctx, create_app
from stratuslab.config import ControllerSettings
from stratuslab.db.models import Base
from stratuslab.db.session import MIGRATIONS_DIR, make_engine

OURS = (
    "project_members",
    "user_identities",
    "quotas",
    "registrations",
    "audit_log",
    "api_tokens",
    "users",
    "projects",
    "lifetime_warned_at",
)


def _upgrade(url: str, revision: str) -> None:
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def test_old_data_is_carried_over(database_url: str, tmp_path: Path) -> None:
    _upgrade(database_url, "0003")
    engine = make_engine(database_url)
    old_token = "a-token-from-before"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO projects (id, name, created_at) "
                "VALUES ('p1', 'admin', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO users (id, name, role, default_project_id, ssh_public_keys, "
                "created_at) VALUES ('u1', 'admin', 'admin', 'p1', '[]', CURRENT_TIMESTAMP), "
                "('u2', 'bob', 'member', 'p1', '[]', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO api_tokens (id, user_id, project_id, token_hash, description, "
                "created_at) VALUES ('t1', 'u2', 'p1', :h, 'old', CURRENT_TIMESTAMP)"
            ),
            {"h": hashlib.sha256(old_token.encode()).hexdigest()},
        )
        conn.execute(
            text(
                "INSERT INTO images (id, name, format, size_bytes, virtual_size_bytes, sha256, "
                "status, path, visibility, owner_id, project_id, created_at, status_reason) "
                "VALUES ('i1', 'img', 'qcow2', 0, 0, '', 'available', '', 'private', 'u2', "
                "'p1', CURRENT_TIMESTAMP, '')"
            )
        )
    engine.dispose()
    settings = ControllerSettings(data_dir=tmp_path / "data", database_url=database_url)
    ctx = build_ctx(settings)  # migrates to head
    try:
        app = create_app(settings, ctx=ctx, background=False)
        with TestClient(app) as client:
            client.headers["Authorization"] = f"Bearer {old_token}"
            me = client.get("/api/v1/auth/whoami").json()
            assert (me["user"], me["roles"], me["admin"]) == ("bob", {"admin": "member"}, False)
            image = client.get("/api/v1/images/img").json()
            assert image["visibility"] == "project"
            quota = client.get("/api/v1/quotas/projects/admin").json()
            assert set(quota["limits"].values()) == {None}
        with ctx.sessions() as s:
            admin = s.execute(text("SELECT cloud_admin FROM users WHERE id = 'u1'")).scalar()
            assert bool(admin) is True
        bind = ctx.sessions.kw["bind"]
        with bind.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        ours = [d for d in diff if any(name in repr(d) for name in OURS)]
        assert ours == []
    finally:
        ctx.close()
