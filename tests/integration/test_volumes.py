"""Volumes through the real app with an in-process agent: the fake compute driver, the
fake volume backend, and the storage pool of agent/volumes.py (like test_lifecycle)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.loop import Agent, host_capacity
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.volumes import EXPORT_HOST, InstanceVolumes, StoragePool, VolumeLink
from stratuslab.agent.workspace import FakeWorkspace
from stratuslab.api.app import housekeeping
from stratuslab.db.models import Volume
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.drivers.storage.fake import FakeVolumeBackend
from stratuslab.schemas.agent import Heartbeat, JoinRequest
from stratuslab.services.context import Ctx
from stratuslab.types import Hypervisor, PowerState
from tests.integration.test_api import error, upload

GiB = 1 << 30
V = "/api/v1/volumes"


@dataclass
class Node:
    agent: Agent
    driver: FakeComputeDriver
    backend: FakeVolumeBackend
    link: VolumeLink
    http: TestClient
    host_id: str

    def settle(self, until: Callable[[], bool] | None = None, passes: int = 20) -> None:
        for _ in range(passes):
            self.agent.step(wait=0)
            if until is None or until():
                return
        if until is not None:
            raise AssertionError("did not converge")

    def beat(self) -> None:
        self.link.heartbeat(Heartbeat(capacity=host_capacity(self.driver, Path("/"))))


def make_node(
    http: TestClient,
    host_id: str,
    driver: FakeComputeDriver,
    backend: FakeVolumeBackend,
    workspace: FakeWorkspace | None = None,
) -> Node:
    workspace = workspace or FakeWorkspace()
    images = FakeImageCache()
    pool = StoragePool(backend, EXPORT_HOST, images, lambda iid: Path(f"/fake/{iid}/root"))
    link = VolumeLink("http://testserver", http=http, pool=pool)
    reconciler = Reconciler(
        driver, workspace, images, hypervisor=Hypervisor.QEMU, volumes=InstanceVolumes(pool)
    )
    agent = Agent(link, reconciler, workspace, lambda: host_capacity(driver, Path("/")))
    return Node(agent, driver, backend, link, http, host_id)


@pytest.fixture
def node(api: TestClient) -> Iterator[Node]:
    token = api.post("/api/v1/hosts/tokens").json()["token"]
    driver = FakeComputeDriver(hostname="node-1", vcpus=8, memory_mib=16384)
    http = TestClient(api.app)
    link = VolumeLink("http://testserver", http=http)
    resp = link.join(JoinRequest(token=token, capacity=host_capacity(driver, Path("/"))))
    http.headers["Authorization"] = f"Bearer {resp.credential}"
    n = make_node(http, resp.host_id, driver, FakeVolumeBackend(capacity_bytes=10 * GiB))
    n.beat()
    yield n
    n.link.close()


@pytest.fixture
def image(api: TestClient, qcow2_file: Path) -> dict[str, Any]:
    return upload(api, qcow2_file, "base")


def ok(resp: Any, status: int = 202) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


def op(api: TestClient, op_id: str) -> dict[str, Any]:
    return dict(api.get(f"/api/v1/operations/{op_id}").json())


def vol(api: TestClient, ref: str) -> dict[str, Any]:
    return dict(ok(api.get(f"{V}/{ref}"), 200))


def create(api: TestClient, node: Node, name: str = "data", gib: float = 1, **kw: Any) -> dict:
    body = ok(api.post(V, json={"name": name, "size_gib": gib, **kw}))
    assert body["volume"]["state"] == "creating"
    node.settle(lambda: op(api, body["operation"]["id"])["status"] != "running")
    assert op(api, body["operation"]["id"])["status"] == "succeeded"
    return vol(api, body["volume"]["id"])


def run(api: TestClient, node: Node, name: str, **kw: Any) -> dict[str, Any]:
    body = ok(api.post("/api/v1/instances", json={"image": "base", "name": name, **kw}))
    node.settle(lambda: op(api, body["operation"]["id"])["status"] != "running")
    assert op(api, body["operation"]["id"])["status"] == "succeeded", op(
        api, body["operation"]["id"]
    )
    return dict(body["instances"][0])


def act(api: TestClient, node: Node, path: str, expect: str = "succeeded", **body: Any) -> dict:
    started = ok(api.post(f"{V}/{path}", json=body))
    op_id = started["operation"]["id"] if "operation" in started else started["id"]
    node.settle(lambda: op(api, op_id)["status"] != "running")
    result = op(api, op_id)
    assert result["status"] == expect, result
    return result


def attached_ids(node: Node, instance_id: str) -> list[str]:
    return [a.volume_id for a in node.driver.attached_volumes(instance_id)]


# -- the resource ---------------------------------------------------------------------------


def test_create_show_list_update(api: TestClient, node: Node) -> None:
    v = create(api, node, "scratch", 2)
    assert (v["state"], v["size_bytes"], v["kind"], v["visibility"]) == (
        "available",
        2 * GiB,
        "data",
        "private",
    )
    assert node.backend.exists(v["id"]) and node.backend.size(v["id"]) == 2 * GiB
    assert [x["name"] for x in ok(api.get(V), 200)] == ["scratch"]
    assert vol(api, "scratch")["id"] == v["id"]
    changed = ok(api.patch(f"{V}/scratch", json={"name": "renamed", "visibility": "public"}), 200)
    assert (changed["name"], changed["visibility"]) == ("renamed", "public")
    kinds = [e["kind"] for e in api.get("/api/v1/events").json()]
    assert {"volume.creating", "volume.available", "volume.updated"} <= set(kinds)


def test_quiet_passes_keep_the_pool_as_it_is(api: TestClient, node: Node) -> None:
    v = create(api, node, "kept", 1)
    asked: list[bool] = []
    desired = node.link.desired

    def spy(*, since: int, wait: float, brief: bool = False):  # type: ignore[no-untyped-def]
        state = desired(since=since, wait=wait, brief=brief)
        asked.append(state.unchanged)
        return state

    node.link.desired = spy  # type: ignore[method-assign]
    for _ in range(3):  # nothing changes: the controller answers "unchanged"
        node.agent.step(wait=0)
    assert asked == [True, True, True]
    assert node.backend.exists(v["id"]) and vol(api, v["id"])["state"] == "available"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"size_gib": 0}, "invalid_size"),
        ({"size_gib": -1}, "invalid_size"),
        ({"size_bytes": 1000}, "invalid_size"),
        ({"size_gib": 11}, "volume_too_large"),
    ],
)
def test_bad_sizes_are_refused_and_nothing_is_made(
    api: TestClient, node: Node, body: dict, code: str
) -> None:
    resp = api.post(V, json={"name": "bad", **body})
    assert resp.status_code in (409, 422) and error(resp)["code"] == code, resp.text
    node.settle()
    assert ok(api.get(V), 200) == [] and node.backend.list_volumes() == []


def test_no_pool_is_a_clear_error(api: TestClient) -> None:
    resp = api.post(V, json={"name": "x", "size_gib": 1})
    assert resp.status_code == 409 and error(resp)["code"] == "no_volume_pool"


def test_backend_failure_sets_error_and_fails_the_operation(api: TestClient, node: Node) -> None:
    node.backend.fail_on.add("create")
    body = ok(api.post(V, json={"name": "doomed", "size_gib": 1}))
    node.settle(lambda: op(api, body["operation"]["id"])["status"] != "running")
    result = op(api, body["operation"]["id"])
    assert result["status"] == "failed" and "injected failure" in result["error"]["message"]
    assert vol(api, "doomed")["state"] == "error"
    node.backend.fail_on.clear()
    node.settle()  # not retried at the same generation
    assert not node.backend.exists(body["volume"]["id"])


def test_grow_snapshot_clone(api: TestClient, node: Node) -> None:
    v = create(api, node, "src", 1)
    act(api, node, "src/grow", size_gib=2)
    assert vol(api, "src")["size_bytes"] == 2 * GiB == node.backend.size(v["id"])
    resp = api.post(f"{V}/src/grow", json={"size_gib": 1})
    assert resp.status_code == 422 and error(resp)["code"] == "invalid_size"

    node.backend.write(v["id"], 0, b"before")
    snap = act(api, node, "src/snapshot", name="snap")
    snap_id = snap["target_ids"][0]
    node.backend.write(v["id"], 0, b"after!")
    assert node.backend.read(snap_id, 0, 6) == b"before"
    s = vol(api, snap_id)
    assert (s["readonly"], s["parent_id"], s["state"]) == (True, v["id"], "available")
    clone = act(api, node, "snap/clone", name="copy")["target_ids"][0]
    assert node.backend.read(clone, 0, 6) == b"before" and not vol(api, clone)["readonly"]
    resp = api.post(f"{V}/snap/grow", json={"size_gib": 3})
    assert resp.status_code == 409 and error(resp)["code"] == "volume_busy"


def test_bootable_volume_and_boot_from_it(api: TestClient, node: Node, image: dict) -> None:
    v = create(api, node, "bootme", image="base")
    assert v["kind"] == "bootable" and v["image_id"] == image["id"]
    vm = run(api, node, "fromvol", boot_volume="bootme")
    assert vol(api, "bootme")["state"] == "in-use"
    assert vol(api, "bootme")["attachments"][0]["target"] == "vda"
    # the boot disk is the volume (not an overlay), and it cannot be detached
    resp = api.post(f"{V}/bootme/detach", json={})
    assert resp.status_code == 409 and error(resp)["code"] == "boot_disk"
    done = ok(api.delete(f"/api/v1/instances/{vm['id']}"))
    node.settle(lambda: op(api, done["id"])["status"] != "running")
    assert vol(api, "bootme")["state"] == "available"


# -- attaching ------------------------------------------------------------------------------


def test_hotplug_attach_detach_and_move(api: TestClient, node: Node, image: dict) -> None:
    v = create(api, node)
    a = run(api, node, "a")
    b = run(api, node, "b")
    act(api, node, "data/attach", instance="a")
    got = vol(api, "data")
    assert got["state"] == "in-use" and got["attachments"][0]["target"] == "vdc"
    assert attached_ids(node, a["id"]) == [v["id"]]
    node.backend.write(v["id"], 0, b"marker")

    for body, code in (
        ({"instance": "a"}, "already_attached"),
        ({"instance": "b"}, "volume_in_use"),
    ):
        resp = api.post(f"{V}/data/attach", json=body)
        assert resp.status_code == 409 and error(resp)["code"] == code
    resp = api.delete(f"{V}/data")
    assert resp.status_code == 409 and error(resp)["code"] == "volume_in_use"

    act(api, node, "data/detach")
    assert vol(api, "data")["state"] == "available" and attached_ids(node, a["id"]) == []
    assert node.backend.info(v["id"]).exports == ()
    act(api, node, "data/attach", instance="b")
    assert attached_ids(node, b["id"]) == [v["id"]]
    assert node.backend.read(v["id"], 0, 6) == b"marker"
    resp = api.post(f"{V}/data/detach", json={"instance": "a"})
    assert resp.status_code == 409 and error(resp)["code"] == "not_attached"


def test_attach_refusals(api: TestClient, node: Node, image: dict) -> None:
    create(api, node)
    resp = api.post(f"{V}/data/attach", json={"instance": "nope"})
    assert resp.status_code == 404 and error(resp)["code"] == "instance_not_found"
    run(api, node, "vm")
    stop = ok(api.post("/api/v1/instances/vm/actions", json={"action": "stop"}))
    node.settle(lambda: op(api, stop["id"])["status"] != "running")
    resp = api.post(f"{V}/data/attach", json={"instance": "vm"})
    assert resp.status_code == 409 and error(resp)["code"] == "not_running"
    resp = api.post(f"{V}/nope/attach", json={"instance": "vm"})
    assert resp.status_code == 404 and error(resp)["code"] == "volume_not_found"
    assert vol(api, "data")["state"] == "available" and vol(api, "data")["attachments"] == []


def test_foreign_instances_and_volumes_are_hidden(
    api: TestClient, node: Node, image: dict, app_client: TestClient, member_token: str
) -> None:
    create(api, node, "admins")
    run(api, node, "adminvm")
    other = TestClient(api.app)
    other.headers["Authorization"] = f"Bearer {member_token}"
    resp = other.post(f"{V}/admins/attach", json={"instance": "adminvm"})
    assert resp.status_code == 404 and error(resp)["code"] == "volume_not_found"
    resp = other.post(V, json={"name": "mine", "size_gib": 1})
    mine = ok(resp)["volume"]["id"]
    node.settle()
    resp = other.post(f"{V}/{mine}/attach", json={"instance": "adminvm"})
    assert resp.status_code == 404 and error(resp)["code"] == "instance_not_found"


def test_hotplug_failure_is_reported_and_undone(api: TestClient, node: Node, image: dict) -> None:
    create(api, node)
    vm = run(api, node, "vm")
    node.driver.fail_on.add("attach_volume")
    result = act(api, node, "data/attach", expect="failed", instance="vm")
    assert "injected failure" in result["error"]["message"]
    assert vol(api, "data")["state"] == "available" and vol(api, "data")["attachments"] == []
    node.driver.fail_on.clear()
    node.settle()
    assert attached_ids(node, vm["id"]) == []

    act(api, node, "data/attach", instance="vm")
    node.driver.guest_releases_disks = False
    result = act(api, node, "data/detach", expect="failed")
    assert "did not release" in result["error"]["message"]
    assert vol(api, "data")["state"] == "in-use"


def test_run_with_volume_and_volatile_disks(api: TestClient, node: Node, image: dict) -> None:
    v = create(api, node)
    vm = run(api, node, "vm", volumes=["data"], volatile_disks=[1, 2])
    ids = attached_ids(node, vm["id"])
    assert ids[0] == v["id"] and len(ids) == 3
    volatile = [x for x in ok(api.get(V), 200) if x["kind"] == "volatile"]
    assert sorted(x["size_bytes"] for x in volatile) == [GiB, 2 * GiB]
    assert {x["state"] for x in volatile} == {"in-use"}
    # volatile disks stay across reboots, cannot be detached or deleted alone
    reboot = ok(api.post("/api/v1/instances/vm/actions", json={"action": "reboot"}))
    node.settle(lambda: op(api, reboot["id"])["status"] != "running")
    assert len(attached_ids(node, vm["id"])) == 3
    resp = api.post(f"{V}/{volatile[0]['id']}/detach", json={})
    assert resp.status_code == 409 and error(resp)["code"] == "boot_disk"
    resp = api.delete(f"{V}/{volatile[0]['id']}")
    assert resp.status_code == 409

    done = ok(api.delete("/api/v1/instances/vm"))
    node.settle(lambda: op(api, done["id"])["status"] != "running")
    assert vol(api, "data")["state"] == "available"
    quarantined = ok(api.get(f"{V}/quarantine"), 200)
    assert {x["kind"] for x in quarantined} == {"volatile", "root"}
    assert all(node.backend.exists(x["id"]) for x in quarantined)


def test_create_with_bad_volumes_makes_nothing(api: TestClient, node: Node, image: dict) -> None:
    create(api, node)
    for body, status in (
        ({"volumes": ["data"], "count": 2}, 422),
        ({"volumes": ["nope"]}, 404),
        ({"volatile_disks": [0]}, 422),
        ({"volatile_disks": [100]}, 409),
    ):
        resp = api.post("/api/v1/instances", json={"image": "base", "name": "x", **body})
        assert resp.status_code == status, resp.text
    assert api.get("/api/v1/instances").json()["total"] == 0
    assert [x["name"] for x in ok(api.get(V), 200)] == ["data"]
    run(api, node, "holder", volumes=["data"])
    resp = api.post("/api/v1/instances", json={"image": "base", "name": "y", "volumes": ["data"]})
    assert resp.status_code == 409 and error(resp)["code"] == "volume_in_use"


# -- quarantine -----------------------------------------------------------------------------


def test_delete_quarantines_then_expiry_wipes(
    api: TestClient, node: Node, ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = create(api, node)
    gone = ok(api.delete(f"{V}/data"), 200)
    assert gone["state"] == "quarantined"
    assert ok(api.get(V), 200) == [] and node.backend.exists(v["id"])
    housekeeping(ctx)  # dates the entry: not over yet
    assert [x["id"] for x in ok(api.get(f"{V}/quarantine"), 200)] == [v["id"]]
    released = ok(api.post(f"{V}/quarantine/{v['id']}/release"), 200)
    assert released["state"] == "available"
    ok(api.delete(f"{V}/data"), 200)
    with ctx.uow() as s:
        row = s.get(Volume, v["id"])
        assert row is not None
        housekeeping_ctx = ctx
        row.updated_at = row.updated_at.replace(year=2000)
    housekeeping(housekeeping_ctx)
    node.settle(lambda: not node.backend.exists(v["id"]))
    node.settle()
    with ctx.sessions() as s:
        assert s.scalar(select(Volume.state).where(Volume.id == v["id"])) == "deleted"


def test_purge_and_admin_only(api: TestClient, node: Node, member_token: str) -> None:
    v = create(api, node)
    ok(api.delete(f"{V}/data"), 200)
    other = TestClient(api.app)
    other.headers["Authorization"] = f"Bearer {member_token}"
    assert other.get(f"{V}/quarantine").status_code == 403
    purge = ok(api.delete(f"{V}/quarantine/{v['id']}"))
    node.settle(lambda: op(api, purge["id"])["status"] != "running")
    assert op(api, purge["id"])["status"] == "succeeded" and not node.backend.exists(v["id"])
    assert api.get(f"{V}/{v['id']}").status_code == 404


# -- restarts -------------------------------------------------------------------------------


def test_attachments_survive_agent_and_controller_restarts(
    api: TestClient, node: Node, image: dict
) -> None:
    v = create(api, node)
    vm = run(api, node, "vm")
    act(api, node, "data/attach", instance="vm")
    # a new agent process: same libvirt (driver) and storage (backend), no memory
    fresh = make_node(node.http, node.host_id, node.driver, node.backend)
    fresh.settle()
    assert attached_ids(fresh, vm["id"]) == [v["id"]]
    assert vol(api, "data")["state"] == "in-use"
    assert node.driver.state(vm["id"]) is PowerState.RUNNING
    # the controller restarts too: everything is in the database
    restarted = TestClient(api.app)
    restarted.headers["Authorization"] = api.headers["Authorization"]
    fresh.settle()
    assert vol(restarted, "data")["state"] == "in-use"
    act(restarted, fresh, "data/detach")
    assert attached_ids(fresh, vm["id"]) == []


def test_migration_matches_the_models(ctx: Ctx) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from stratuslab.db.models import Base

    with ctx.sessions.kw["bind"].connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [c for c in diff if "volume" in repr(c)] == []


def test_volume_quota_counts_existing_volumes_and_their_size(api: TestClient, node: Node) -> None:
    project = api.get("/api/v1/auth/whoami").json()["project_id"]
    resp = api.put(f"/api/v1/quotas/projects/{project}", json={"volumes": 2, "volume_gib": 3})
    assert resp.status_code == 200, resp.text
    create(api, node, "one", gib=2)
    too_big = api.post(V, json={"name": "two", "size_gib": 2})
    assert too_big.status_code == 409
    assert too_big.json()["error"]["code"] == "quota_exceeded"
    assert "volume_gib" in too_big.text
    create(api, node, "small", gib=1)
    third = api.post(V, json={"name": "three", "size_gib": 0.5})
    assert third.status_code == 409
    assert "volumes" in third.json()["error"]["message"]
