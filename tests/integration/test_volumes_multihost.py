"""Volumes across hosts and saved root disks, through the real app with in-process agents
(the fake compute driver and fake volume backends, as in test_volumes.py).

* a stopped instance's root disk saved as a new bootable volume (``POST /volumes`` with
  ``instance``) in the pool of its host, holding the disk's bytes, and booted from;
* a volume in the (shared) pool of host A attached to an instance on host B: A exports it to
  B, B opens it at the URL A reported, and A withdraws the export when B lets go; a local
  pool refuses (``wrong_host``); a failed export fails the attach.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.loop import Agent, host_capacity
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.volumes import EXPORT_HOST, InstanceVolumes, StoragePool, VolumeLink
from stratuslab.agent.workspace import FakeWorkspace
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.drivers.storage.base import BackendFeatures
from stratuslab.drivers.storage.fake import FakeVolumeBackend
from stratuslab.schemas.agent import JoinRequest
from stratuslab.types import Hypervisor
from tests.integration.test_api import error, upload
from tests.integration.test_volumes import GiB, Node, V, ok, op, vol

ROOT_BYTES = b"ROOT-DISK-MARKER" + bytes(range(256)) * 16


def join_node(
    api: TestClient,
    name: str,
    *,
    capacity: int,
    memory_mib: int = 16384,
    root_disk: Callable[[str], Path] | None = None,
) -> Node:
    token = api.post("/api/v1/hosts/tokens").json()["token"]
    driver = FakeComputeDriver(hostname=name, vcpus=8, memory_mib=memory_mib)
    http = TestClient(api.app)
    link = VolumeLink("http://testserver", http=http)
    resp = link.join(JoinRequest(token=token, capacity=host_capacity(driver, Path("/"))))
    http.headers["Authorization"] = f"Bearer {resp.credential}"
    backend = FakeVolumeBackend(capacity_bytes=capacity)
    workspace, images = FakeWorkspace(), FakeImageCache()
    pool = StoragePool(
        backend, EXPORT_HOST, images, root_disk or (lambda iid: Path(f"/fake/{iid}/root"))
    )
    link = VolumeLink("http://testserver", http=http, pool=pool)
    reconciler = Reconciler(
        driver, workspace, images, hypervisor=Hypervisor.QEMU, volumes=InstanceVolumes(pool)
    )
    agent = Agent(link, reconciler, workspace, lambda: host_capacity(driver, Path("/")))
    node = Node(agent, driver, backend, link, http, resp.host_id)
    node.beat()
    return node


def settle(nodes: list[Node], until: Callable[[], bool], passes: int = 20) -> None:
    for _ in range(passes):
        for n in nodes:
            n.agent.step(wait=0)
        if until():
            return
    raise AssertionError("did not converge")


def finish(api: TestClient, nodes: list[Node], op_id: str, expect: str = "succeeded") -> dict:
    settle(nodes, lambda: op(api, op_id)["status"] != "running")
    result = op(api, op_id)
    assert result["status"] == expect, result.get("error")
    return result


def instance(api: TestClient, nodes: list[Node], name: str, **kw: Any) -> dict[str, Any]:
    body = ok(api.post("/api/v1/instances", json={"image": "base", "name": name, **kw}))
    finish(api, nodes, body["operation"]["id"])
    return dict(api.get(f"/api/v1/instances/{name}").json())


# -- saving a root disk as a volume -----------------------------------------------------------


@pytest.fixture
def disks(tmp_path: Path) -> Path:
    (tmp_path / "roots").mkdir()
    return tmp_path / "roots"


@pytest.fixture
def saver(api: TestClient, disks: Path) -> Iterator[Node]:
    n = join_node(api, "node-1", capacity=10 * GiB, root_disk=lambda iid: disks / f"{iid}.raw")
    yield n
    n.link.close()


def test_root_disk_saved_as_a_bootable_volume_and_booted(
    api: TestClient, saver: Node, disks: Path, qcow2_file: Path
) -> None:
    image = upload(api, qcow2_file, "base")
    vm = instance(api, [saver], "vm")
    (disks / f"{vm['id']}.raw").write_bytes(ROOT_BYTES)  # the guest's root disk

    resp = api.post(V, json={"name": "saved", "instance": "vm"})
    assert resp.status_code == 409 and error(resp)["code"] == "not_stopped"
    stop = ok(api.post("/api/v1/instances/vm/actions", json={"action": "stop"}))
    finish(api, [saver], stop["id"])
    for body, status, code in (
        ({"instance": "vm", "image": "base"}, 422, None),
        ({"instance": "nope"}, 404, "instance_not_found"),
    ):
        resp = api.post(V, json={"name": "bad", **body})
        assert resp.status_code == status, resp.text
        assert code is None or error(resp)["code"] == code

    made = ok(api.post(V, json={"name": "saved", "instance": "vm"}))
    finish(api, [saver], made["operation"]["id"])
    saved = vol(api, "saved")
    assert (saved["kind"], saved["state"], saved["host_id"]) == (
        "bootable",
        "available",
        saver.host_id,
    )
    assert saved["image_id"] == image["id"] and saved["size_bytes"] >= 64 << 20
    assert saver.backend.read(saved["id"], 0, len(ROOT_BYTES)) == ROOT_BYTES
    kinds = [e["kind"] for e in api.get("/api/v1/events").json()]
    assert "volume.creating" in kinds

    # the saved disk boots a new instance, while the old one is left as it was
    booted = instance(api, [saver], "again", boot_volume="saved")
    assert vol(api, "saved")["attachments"][0]["target"] == "vda"
    assert api.get("/api/v1/instances/vm").json()["status"] == "stopped"
    assert booted["status"] == "running"


def test_saving_a_missing_root_disk_fails_the_operation(
    api: TestClient, saver: Node, qcow2_file: Path
) -> None:
    upload(api, qcow2_file, "base")
    instance(api, [saver], "vm")  # no root disk file written: nothing to copy
    stop = ok(api.post("/api/v1/instances/vm/actions", json={"action": "stop"}))
    finish(api, [saver], stop["id"])
    made = ok(api.post(V, json={"name": "saved", "instance": "vm"}))
    result = finish(api, [saver], made["operation"]["id"], expect="failed")
    assert "no root disk" in result["error"]["message"]
    assert vol(api, "saved")["state"] == "error"
    assert not saver.backend.exists(made["volume"]["id"])


# -- a volume of host A on an instance of host B -------------------------------------------


@pytest.fixture
def two_hosts(api: TestClient, qcow2_file: Path) -> Iterator[tuple[Node, Node]]:
    upload(api, qcow2_file, "base")
    # A: the larger pool (volumes go there) and no room for instances (they go to B)
    a = join_node(api, "node-a", capacity=10 * GiB, memory_mib=64)
    b = join_node(api, "node-b", capacity=2 * GiB)
    yield a, b
    a.link.close()
    b.link.close()


def test_volume_of_one_host_attached_on_another(
    api: TestClient, two_hosts: tuple[Node, Node]
) -> None:
    a, b = two_hosts
    nodes = [a, b]
    made = ok(api.post(V, json={"name": "shared", "size_gib": 1}))
    finish(api, nodes, made["operation"]["id"])
    volume_id = made["volume"]["id"]
    assert vol(api, "shared")["host_id"] == a.host_id
    a.backend.write(volume_id, 0, b"from-host-a")
    vm = instance(api, nodes, "vm")
    assert vm["host_id"] == b.host_id

    finish(api, nodes, ok(api.post(f"{V}/shared/attach", json={"instance": "vm"}))["id"])
    assert a.backend.info(volume_id).exports == ("node-b",)
    (attached,) = b.driver.attached_volumes(vm["id"])
    assert attached.volume_id == volume_id and attached.target == "vdc"
    assert attached.path == Path("/fake/volumes") / volume_id  # where A said to open it
    assert not b.backend.exists(volume_id)  # B's own pool has nothing of it
    assert vol(api, "shared")["state"] == "in-use"

    finish(api, nodes, ok(api.post(f"{V}/shared/detach", json={}))["id"])
    assert not b.driver.attached_volumes(vm["id"])
    settle(nodes, lambda: a.backend.info(volume_id).exports == ())
    assert vol(api, "shared")["state"] == "available"
    assert a.backend.read(volume_id, 0, 11) == b"from-host-a"

    # attached at creation on B, withdrawn when the instance is deleted
    vm2 = instance(api, nodes, "vm2", volumes=["shared"])
    assert [x.volume_id for x in b.driver.attached_volumes(vm2["id"])] == [volume_id]
    done = ok(api.delete("/api/v1/instances/vm2"))
    finish(api, nodes, done["id"])
    settle(nodes, lambda: a.backend.info(volume_id).exports == ())
    assert vol(api, "shared")["state"] == "available"


def test_local_pool_refuses_other_hosts_and_failed_export_fails_attach(
    api: TestClient, two_hosts: tuple[Node, Node]
) -> None:
    a, b = two_hosts
    nodes = [a, b]
    made = ok(api.post(V, json={"name": "v", "size_gib": 1}))
    finish(api, nodes, made["operation"]["id"])
    instance(api, nodes, "vm")

    a.backend.fail_on.add("export")
    result = finish(
        api, nodes, ok(api.post(f"{V}/v/attach", json={"instance": "vm"}))["id"], "failed"
    )
    assert "injected failure" in result["error"]["message"]
    assert vol(api, "v")["state"] == "available" and vol(api, "v")["attachments"] == []
    a.backend.fail_on.clear()

    a.backend.features = BackendFeatures(cow_clone=True, live_snapshot=True, shared=False)
    a.beat()
    resp = api.post(f"{V}/v/attach", json={"instance": "vm"})
    assert resp.status_code == 409 and error(resp)["code"] == "wrong_host"
    assert vol(api, "v")["attachments"] == []
