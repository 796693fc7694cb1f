"""Authentication overhead per request through the app, and quotas under concurrent creates.

(a) token auth: the median time of ``GET /api/v1/flavors`` with an ``stl_`` token minus the
    same request with authentication replaced by a fixed principal (FastAPI dependency
    override), through the whole app (ASGI, middleware, routing, a SQLite file, the
    authorization rule). Target: p50 overhead <= 2 ms.
(b) quotas: 50 threads create one instance each in a project whose quota allows 10; the
    number created must be exactly 10 (never more), on SQLite and, when
    ``STRATUS_TEST_POSTGRES_URL`` is set, on PostgreSQL.

    .venv/bin/python bench/auth_quota.py [--requests 2000] [--creates 50] [--limit 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from stratuslab.api.app import build_ctx, create_app
from stratuslab.api.deps import get_principal
from stratuslab.config import ControllerSettings
from stratuslab.db.models import Host, Instance, Project, ProjectMember, User, utcnow
from stratuslab.identity.principal import Principal
from stratuslab.identity.quotas import UNLIMITED
from stratuslab.services import auth, flavors, projects
from stratuslab.services.context import Ctx
from stratuslab.types import Role
from tests.conftest import make_qcow2

TARGET_MS = 2.0


@contextmanager
def controller(url: str, data: Path) -> Iterator[tuple[Ctx, TestClient]]:
    settings = ControllerSettings(data_dir=data, database_url=url)
    ctx = build_ctx(settings)
    app = create_app(settings, ctx=ctx, background=False)
    try:
        with TestClient(app) as client:
            yield ctx, client
    finally:
        ctx.close()


def member(ctx: Ctx, project_name: str) -> tuple[str, Principal]:
    with ctx.uow() as s:
        admin, admin_project = auth.ensure_admin(s)
        flavors.ensure_builtin(s, admin.id, admin_project.id)
        project = projects.create_project(s, name=project_name, limits=UNLIMITED)
        user = User(name=f"u-{uuid.uuid4().hex[:8]}", default_project_id=project.id)
        s.add(user)
        s.flush()
        s.add(ProjectMember(project_id=project.id, user_id=user.id, role=Role.MEMBER.value))
        token = auth.issue_token(s, user, project, "bench")
        principal = Principal(
            user_id=user.id, project_id=project.id, roles={project.id: Role.MEMBER}
        )
        return token, principal


def timed(client: TestClient, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        response = client.get("/api/v1/flavors")
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
    return samples


def bench_token_overhead(requests: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/controller.db"
        with controller(url, Path(tmp)) as (ctx, client):
            token, principal = member(ctx, "bench")
            client.headers["Authorization"] = f"Bearer {token}"
            timed(client, 50)  # warm up
            with_auth = timed(client, requests)
            client.app.dependency_overrides[get_principal] = lambda: principal  # type: ignore[attr-defined]
            timed(client, 50)
            without = timed(client, requests)
    a, b = statistics.median(with_auth), statistics.median(without)
    print(f"GET /flavors with token auth           median {a:7.3f} ms   (n={requests})")
    print(f"GET /flavors, authentication bypassed  median {b:7.3f} ms   (n={requests})")
    print(f"token authentication overhead (p50)    {a - b:7.3f} ms   target <= {TARGET_MS} ms")
    return a - b


def bench_quota(url: str, data: Path, creates: int, limit: int) -> bool:
    with controller(url, data) as (ctx, client):
        token, _ = member(ctx, "quota-bench")
        with ctx.uow() as s:
            s.add(
                Host(
                    name="bench-node",
                    vcpus=10_000,
                    memory_mib=1 << 30,
                    credential_hash=auth.hash_secret(uuid.uuid4().hex),
                    last_heartbeat=utcnow(),
                )
            )
        client.headers["Authorization"] = f"Bearer {token}"
        disk = make_qcow2(data / "disk.qcow2", "16M")
        assert client.post(
            "/api/v1/images", params={"name": "base"}, content=disk.read_bytes()
        ).is_success
        admin_token = _admin_token(ctx)
        put = client.put(
            "/api/v1/quotas/projects/quota-bench",
            json={"instances": limit},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert put.is_success, put.text
        statuses: list[int] = []
        barrier = threading.Barrier(creates)

        def create(i: int) -> None:
            other = TestClient(client.app)
            other.headers["Authorization"] = f"Bearer {token}"
            barrier.wait()
            r = other.post(
                "/api/v1/instances", json={"image": "base", "name": f"b{i}", "flavor": "t1.micro"}
            )
            statuses.append(r.status_code)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(creates)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        with ctx.sessions() as s:
            project_id = s.scalar(select(Project.id).where(Project.name == "quota-bench"))
            made = s.scalar(
                select(func.count()).select_from(Instance).where(Instance.project_id == project_id)
            )
    ok = made == limit and statuses.count(202) == limit
    kind = url.split(":", 1)[0]
    print(
        f"quota {kind:<10} {creates} concurrent creates, limit {limit}: created {made}, "
        f"refused {statuses.count(409)}, {elapsed:.2f} s: {'PASS' if ok else 'FAIL'}"
    )
    return ok


def _admin_token(ctx: Ctx) -> str:
    with ctx.uow() as s:
        admin, project = auth.ensure_admin(s)
        return auth.issue_token(s, admin, project, "bench admin")


def _postgres_url() -> Iterator[str]:
    base = os.environ.get("STRATUS_TEST_POSTGRES_URL", "")
    if not base:
        return
    import psycopg

    name = f"stratus_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()
    overhead = bench_token_overhead(args.requests)
    results = [overhead <= TARGET_MS]
    with tempfile.TemporaryDirectory() as tmp:
        results.append(bench_quota(f"sqlite:///{tmp}/q.db", Path(tmp), args.creates, args.limit))
    for url in _postgres_url():
        with tempfile.TemporaryDirectory() as tmp:
            results.append(bench_quota(url, Path(tmp), args.creates, args.limit))
    print("PASS" if all(results) else "FAIL")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
