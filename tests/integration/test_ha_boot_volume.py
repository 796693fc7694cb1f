"""HA policy ``migrate`` with a boot volume in a shared pool: the instance's host fails, the
instance is placed on another host and boots there from the same volume, through the export
of the volume's host (real app, in-process agents over the fake driver and fake volume
backends; housekeeping passes run by hand, as in test_multihost.py).

Hosts: C holds the bootable volume (a shared pool, no room for instances); the instance runs
on A; A goes silent; after housekeeping the instance is on B, which opens C's export.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stratuslab.api.app import housekeeping
from stratuslab.services.context import Ctx
from stratuslab.types import PowerState
from tests.integration.test_api import upload
from tests.integration.test_multihost import silence
from tests.integration.test_volumes import GiB, Node, ok, vol
from tests.integration.test_volumes_multihost import finish, join_node, settle
from tests.integration.test_volumes_remote_boot import (
    BOOT_BYTES,
    boot_disk,
    bootable_on,
    desired_of,
)

P = "/api/v1"


@pytest.fixture
def three(api: TestClient, qcow2_file: Path) -> Iterator[tuple[Node, Node, Node]]:
    upload(api, qcow2_file, "base")
    c = join_node(api, "node-c", capacity=10 * GiB, memory_mib=64)
    a = join_node(api, "node-a", capacity=1 * GiB)
    b = join_node(api, "node-b", capacity=1 * GiB)
    yield a, b, c
    for n in (a, b, c):
        n.link.close()


def test_ha_migrate_boots_elsewhere_from_the_same_shared_boot_volume(
    api: TestClient, ctx: Ctx, three: tuple[Node, Node, Node]
) -> None:
    a, b, c = three
    volume_id = bootable_on(api, [a, b, c], c)

    api.post(f"{P}/hosts/node-b/state", json={"action": "disable"})  # A it is
    body = ok(
        api.post(
            f"{P}/instances",
            json={"image": "base", "name": "pet", "boot_volume": "sys", "ha_policy": "migrate"},
        )
    )
    api.post(f"{P}/hosts/node-b/state", json={"action": "enable"})
    pet = body["instances"][0]
    assert pet["host_id"] == a.host_id
    finish(api, [a, c], body["operation"]["id"])
    assert boot_disk(a, pet["id"]).path == Path("/fake/volumes") / volume_id
    assert c.backend.info(volume_id).exports == ("node-a",)

    # A goes silent: its instance is unknown, then placed on B (HA migrate)
    silence(ctx, a)
    housekeeping(ctx)
    housekeeping(ctx)
    moved = api.get(f"{P}/instances/pet").json()
    assert moved["id"] == pet["id"] and moved["host_id"] == b.host_id, moved
    attachments = vol(api, "sys")["attachments"]
    assert [(x["instance_id"], x["target"]) for x in attachments] == [(pet["id"], "vda")]

    # B waits for C's export (and its report wakes C); then boots from C's URL
    c_before, _ = desired_of(c, "")
    b.agent.step(wait=0)
    _, want = desired_of(b, pet["id"])
    assert want is not None and want.boot_volume == volume_id
    assert want.boot_volume_remote and want.boot_volume_url is None
    assert b.driver.state(pet["id"]) is PowerState.MISSING
    assert (
        "waiting for the host of boot volume"
        in api.get(f"{P}/instances/pet").json()["status_reason"]
    )
    assert desired_of(c, "")[0] > c_before

    settle([b, c], lambda: api.get(f"{P}/instances/pet").json()["status"] == "running")
    _, want = desired_of(b, pet["id"])
    assert want is not None and want.boot_volume_url == f"file:///fake/volumes/{volume_id}"
    assert boot_disk(b, pet["id"]).path == Path("/fake/volumes") / volume_id
    assert not b.backend.exists(volume_id) and not a.backend.exists(volume_id)
    assert c.backend.info(volume_id).exports == ("node-b",)  # withdrawn from A
    assert c.backend.read(volume_id, 0, len(BOOT_BYTES)) == BOOT_BYTES  # the same disk
    assert vol(api, "sys")["state"] == "in-use"

    # A comes back: it destroys its stale copy first; B keeps the instance
    assert a.driver.state(pet["id"]) is PowerState.RUNNING
    a.beat()
    a.agent.step(wait=0)
    assert a.driver.state(pet["id"]) is PowerState.MISSING
    assert b.driver.state(pet["id"]) is PowerState.RUNNING
    assert c.backend.info(volume_id).exports == ("node-b",)
