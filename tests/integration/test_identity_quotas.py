"""Quotas through the API: 50 concurrent creates never pass a limit (SQLite and PostgreSQL);
show and set; images; per-user limits; lowered limits never block deletes."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient

from stratuslab.services.context import Ctx
from stratuslab.types import Role
from tests.conftest import make_qcow2
from tests.integration.test_authz_matrix import add_host, add_user

P = "/api/v1"


def as_(client: TestClient, token: str) -> TestClient:
    other = TestClient(client.app)
    other.headers["Authorization"] = f"Bearer {token}"
    return other


def upload(client: TestClient, tmp_path: Path, name: str) -> dict:
    disk = make_qcow2(tmp_path / f"{name}.qcow2", "16M")
    resp = client.post(f"{P}/images", params={"name": name}, content=disk.read_bytes())
    assert resp.status_code == 201, resp.text
    return resp.json()


def concurrently(n: int, call) -> list:  # type: ignore[no-untyped-def]
    results: list = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_fifty_concurrent_creates_never_exceed_the_quota(
    api: TestClient, ctx: Ctx, tmp_path: Path
) -> None:
    token = add_user(ctx, "olga", "physics", Role.MEMBER)
    add_host(ctx)
    olga = as_(api, token)
    image = upload(olga, tmp_path, "base")
    resp = api.put(f"{P}/quotas/projects/physics", json={"instances": 7, "vcpus": 100})
    assert resp.status_code == 200, resp.text
    assert resp.json()["limits"]["instances"] == 7

    def create(i: int) -> tuple[int, str]:
        client = as_(api, token)
        r = client.post(
            f"{P}/instances", json={"image": image["id"], "name": f"q{i}", "flavor": "t1.micro"}
        )
        return r.status_code, r.json().get("error", {}).get("code", "")

    results = concurrently(50, create)
    assert sorted({status for status, _ in results}) == [202, 409]
    assert sum(1 for status, _ in results if status == 202) == 7
    assert {code for status, code in results if status == 409} == {"quota_exceeded"}
    shown = olga.get(f"{P}/quotas/projects/physics").json()
    assert shown["usage"]["instances"] == 7
    refused = olga.post(f"{P}/instances", json={"image": "base", "count": 2})
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "7 in use + 2 requested > limit 7" in error["message"]
    assert error["details"]["exceeded"][0]["resource"] == "instances"


def test_vcpu_and_ram_limits_count_the_flavor(api: TestClient, ctx: Ctx, tmp_path: Path) -> None:
    token = add_user(ctx, "olga", "physics", Role.MEMBER)
    add_host(ctx)
    olga = as_(api, token)
    upload(olga, tmp_path, "base")
    api.put(f"{P}/quotas/projects/physics", json={"vcpus": 4, "ram_mib": -1})
    ok = olga.post(f"{P}/instances", json={"image": "base", "flavor": "c1.medium", "count": 2})
    assert ok.status_code == 202, ok.text
    over = olga.post(f"{P}/instances", json={"image": "base", "flavor": "t1.micro"})
    assert over.status_code == 409
    assert "vCPUs: 4 in use + 1 requested > limit 4" in over.json()["error"]["message"]
    # lowering a limit below use never blocks deletes
    api.put(f"{P}/quotas/projects/physics", json={"vcpus": 1})
    first = olga.get(f"{P}/instances").json()["items"][0]["id"]
    assert olga.delete(f"{P}/instances/{first}").status_code == 202


def test_image_quota_and_user_quota(api: TestClient, ctx: Ctx, tmp_path: Path) -> None:
    token = add_user(ctx, "olga", "physics", Role.MEMBER)
    olga = as_(api, token)
    api.put(f"{P}/quotas/projects/physics", json={"images": 1})
    upload(olga, tmp_path, "one")
    disk = make_qcow2(tmp_path / "two.qcow2", "16M")
    resp = olga.post(f"{P}/images", params={"name": "two"}, content=disk.read_bytes())
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "quota_exceeded"
    # a user limit applies across projects
    api.put(f"{P}/quotas/projects/physics", json={"images": -1})
    resp = api.put(f"{P}/quotas/users/olga", json={"images": 1})
    assert resp.json()["scope"] == "user"
    resp = olga.post(f"{P}/images", params={"name": "two"}, content=disk.read_bytes())
    assert resp.status_code == 409
    assert "user 'olga'" in resp.json()["error"]["message"]
    assert olga.get(f"{P}/quotas/users/me").json()["usage"]["images"] == 1


def test_only_cloud_admins_set_quotas(api: TestClient, ctx: Ctx) -> None:
    token = add_user(ctx, "paul", "physics", Role.ADMIN)
    paul = as_(api, token)
    assert paul.get(f"{P}/quotas/projects/physics").status_code == 200
    resp = paul.put(f"{P}/quotas/projects/physics", json={"instances": 1000})
    assert resp.status_code == 403
    bad = api.put(f"{P}/quotas/projects/physics", json={"instances": -5})
    assert bad.status_code == 422


def test_new_projects_get_the_default_quota(api: TestClient) -> None:
    resp = api.post(f"{P}/projects", json={"name": "newproj"})
    assert resp.status_code == 201, resp.text
    limits = api.get(f"{P}/quotas/projects/newproj").json()["limits"]
    assert limits["instances"] == 20
    assert limits["vcpus"] == 20
