"""Shared fixtures: settings, databases (SQLite always, PostgreSQL when configured), the app."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stratuslab.api.app import build_ctx, create_app
from stratuslab.config import ControllerSettings
from stratuslab.services import auth, flavors
from stratuslab.services.context import Ctx
from stratuslab.types import Role

POSTGRES_URL = os.environ.get("STRATUS_TEST_POSTGRES_URL", "")


def _postgres_db() -> Iterator[str]:
    import psycopg

    name = f"stratus_test_{uuid.uuid4().hex[:12]}"
    admin_url = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'controller.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("STRATUS_TEST_POSTGRES_URL is not set (make test starts PostgreSQL)")
    yield from _postgres_db()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> ControllerSettings:
    return ControllerSettings(
        data_dir=tmp_path / "data", database_url=database_url, stop_timeout=2.0
    )


@pytest.fixture
def ctx(settings: ControllerSettings) -> Iterator[Ctx]:
    ctx = build_ctx(settings)
    yield ctx
    ctx.close()


@pytest.fixture
def admin_token(ctx: Ctx) -> str:
    with ctx.uow() as s:
        user, project = auth.ensure_admin(s)
        flavors.ensure_builtin(s, user.id, project.id)
        return auth.issue_token(s, user, project, "tests")


@pytest.fixture
def member_token(ctx: Ctx, admin_token: str) -> str:
    """A non-admin user (a member of project "physics", another project)."""
    from stratuslab.db.models import Project, ProjectMember, User

    with ctx.uow() as s:
        project = Project(name="physics")
        s.add(project)
        s.flush()
        user = User(name="alice", role=Role.MEMBER.value, default_project_id=project.id)
        s.add(user)
        s.flush()
        s.add(ProjectMember(project_id=project.id, user_id=user.id, role=Role.MEMBER.value))
        return auth.issue_token(s, user, project, "tests")


@pytest.fixture
def app_client(ctx: Ctx, settings: ControllerSettings) -> Iterator[TestClient]:
    app = create_app(settings, ctx=ctx, background=False)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def api(app_client: TestClient, admin_token: str) -> TestClient:
    app_client.headers["Authorization"] = f"Bearer {admin_token}"
    return app_client


def make_qcow2(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


@pytest.fixture
def qcow2_file(tmp_path: Path) -> Path:
    return make_qcow2(tmp_path / "disk.qcow2")
