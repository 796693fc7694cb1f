"""Booting from a volume of another host's shared pool, through the real app with in-process
agents (the fake compute driver and fake volume backends, as in test_volumes_multihost.py).

Host C holds the bootable volume (its pool exports to other hosts) and has no room for
instances; the instance runs on host B. The controller asks C to export the volume to B; B's
desired state carries C's URL for the boot disk only once C has reported the export (until
then B waits, saying why); B opens C's URL, not its own pool; deleting the instance withdraws
the export.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stratuslab.agent.controller import ControllerLink
from stratuslab.drivers.base import DiskSpec
from stratuslab.schemas.agent import DesiredInstance
from stratuslab.types import PowerState
from tests.integration.test_api import error, upload
from tests.integration.test_volumes import GiB, Node, V, ok, op, vol
from tests.integration.test_volumes_multihost import finish, join_node, settle

BOOT_BYTES = b"BOOT-VOLUME-OF-HOST-C"

#: services/instances.py ``_volume_host`` still pins an instance to the host of its boot
#: volume even when that pool is shared (``boot or not pool_shared(...)``), so these
#: instances cannot go to another host. Drop this marker (here, in test_ha_boot_volume.py
#: and tests/functional/test_volumes_remote_boot.py) with that pin.


def desired_of(node: Node, instance_id: str) -> tuple[int, DesiredInstance | None]:
    """The host's desired state as the controller serves it now (without converging its
    pool): its generation and the instance in it."""
    state = ControllerLink.desired(node.link, since=-1, wait=0)
    return state.generation, next((i for i in state.instances if i.id == instance_id), None)


def boot_disk(node: Node, instance_id: str) -> DiskSpec:
    disk = node.driver._domains[instance_id].spec.disks[0]  # the fake keeps what was defined
    assert disk.target == "vda"
    return disk


def bootable_on(api: TestClient, nodes: list[Node], pool: Node, name: str = "sys") -> str:
    """A bootable volume holding image ``base`` in ``pool``'s pool (the largest)."""
    made = ok(api.post(V, json={"name": name, "image": "base"}))
    finish(api, nodes, made["operation"]["id"])
    assert vol(api, name)["host_id"] == pool.host_id
    volume_id = str(made["volume"]["id"])
    pool.backend.write(volume_id, 0, BOOT_BYTES)
    return volume_id


@pytest.fixture
def pool_and_compute(api: TestClient, qcow2_file: Path) -> Iterator[tuple[Node, Node]]:
    upload(api, qcow2_file, "base")
    # C: the larger pool (volumes go there), no room for instances (they go to B)
    c = join_node(api, "node-c", capacity=10 * GiB, memory_mib=64)
    b = join_node(api, "node-b", capacity=2 * GiB)
    yield c, b
    c.link.close()
    b.link.close()


def test_boot_from_a_volume_of_another_hosts_shared_pool(
    api: TestClient, pool_and_compute: tuple[Node, Node]
) -> None:
    c, b = pool_and_compute
    nodes = [c, b]
    volume_id = bootable_on(api, nodes, c)
    c_before, _ = desired_of(c, "")

    body = ok(
        api.post("/api/v1/instances", json={"image": "base", "name": "vm", "boot_volume": "sys"})
    )
    inst = body["instances"][0]
    assert inst["host_id"] == b.host_id
    c_after, _ = desired_of(c, "")
    assert c_after > c_before  # C is asked to export it to B at once

    # B alone: C has not exported it yet, so there is no URL and B waits (no error)
    for _ in range(3):
        b.agent.step(wait=0)
    _, want = desired_of(b, inst["id"])
    assert want is not None and want.boot_volume == volume_id
    assert want.boot_volume_remote and want.boot_volume_url is None
    assert b.driver.state(inst["id"]) is PowerState.MISSING
    waiting = api.get("/api/v1/instances/vm").json()
    assert waiting["status"] == "provisioning"
    assert "waiting for the host of boot volume" in waiting["status_reason"]
    assert op(api, body["operation"]["id"])["status"] == "running"

    # C exports to B and reports the URL; B boots from it, not from its own pool
    finish(api, nodes, body["operation"]["id"])
    assert c.backend.info(volume_id).exports == ("node-b",)
    _, want = desired_of(b, inst["id"])
    assert want is not None and want.boot_volume_url == f"file:///fake/volumes/{volume_id}"
    assert want.boot_volume_format == "raw"
    disk = boot_disk(b, inst["id"])
    assert (disk.path, disk.format, disk.network) == (
        Path("/fake/volumes") / volume_id,
        "raw",
        None,
    )
    assert not b.backend.exists(volume_id)
    got = vol(api, "sys")
    assert got["state"] == "in-use" and got["attachments"][0]["target"] == "vda"
    assert api.get("/api/v1/instances/vm").json()["status"] == "running"

    # a boot disk stays with its instance; deleting the instance withdraws the export
    resp = api.post(f"{V}/sys/detach", json={})
    assert resp.status_code == 409 and error(resp)["code"] == "boot_disk"
    assert c.backend.info(volume_id).exports == ("node-b",)
    done = ok(api.delete("/api/v1/instances/vm"))
    finish(api, nodes, done["id"])
    settle(nodes, lambda: c.backend.info(volume_id).exports == ())
    assert vol(api, "sys")["state"] == "available"
    assert c.backend.read(volume_id, 0, len(BOOT_BYTES)) == BOOT_BYTES


def test_a_failed_export_keeps_the_instance_waiting_then_it_boots(
    api: TestClient, pool_and_compute: tuple[Node, Node]
) -> None:
    c, b = pool_and_compute
    nodes = [c, b]
    volume_id = bootable_on(api, nodes, c)
    c.backend.fail_on.add("export")
    body = ok(
        api.post("/api/v1/instances", json={"image": "base", "name": "vm", "boot_volume": "sys"})
    )
    instance_id = body["instances"][0]["id"]
    for _ in range(3):
        for n in nodes:
            n.agent.step(wait=0)
    assert b.driver.state(instance_id) is PowerState.MISSING
    assert api.get("/api/v1/instances/vm").json()["status"] == "provisioning"
    assert c.backend.info(volume_id).exports == ()
    failed = [e for e in api.get("/api/v1/events").json() if e["kind"] == "volume.export_failed"]
    assert len(failed) == 1 and "injected failure" in failed[0]["message"]  # said once

    c.backend.fail_on.clear()  # the next pass of C exports it, and B boots
    finish(api, nodes, body["operation"]["id"])
    assert boot_disk(b, instance_id).path == Path("/fake/volumes") / volume_id
