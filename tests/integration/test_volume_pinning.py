"""The scheduler follows volumes in local pools: an instance that needs a volume of host B's
local pool is placed on B (never on a host that cannot open it), and one that would need the
local pools of two hosts is refused before anything is made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stratuslab.api.app import housekeeping
from stratuslab.drivers.storage.base import BackendFeatures
from stratuslab.services.context import Ctx
from tests.integration.test_api import error, upload
from tests.integration.test_volumes import GiB, Node, V, ok
from tests.integration.test_volumes_multihost import finish, join_node, settle


@pytest.fixture
def nodes(api: TestClient, qcow2_file: Path) -> Iterator[list[Node]]:
    upload(api, qcow2_file, "base")
    made = [join_node(api, "node-1", capacity=4 * GiB), join_node(api, "node-2", capacity=8 * GiB)]
    for n in made:  # local pools: what they hold only their own host can open
        n.backend.features = BackendFeatures(cow_clone=True, live_snapshot=True, shared=False)
        n.beat()
    yield made
    for n in made:
        n.link.close()


def volume_on(api: TestClient, nodes: list[Node], name: str, host: str) -> dict:
    """A volume made in ``host``'s pool (the others are disabled meanwhile)."""
    others = [f"node-{i}" for i in (1, 2) if f"node-{i}" != host]
    for other in others:
        api.post(f"/api/v1/hosts/{other}/state", json={"action": "disable"})
    body = ok(api.post(V, json={"name": name, "size_gib": 1}))
    for other in others:
        api.post(f"/api/v1/hosts/{other}/state", json={"action": "enable"})
    finish(api, nodes, body["operation"]["id"])
    return dict(ok(api.get(f"{V}/{name}"), 200))


def test_an_instance_goes_where_its_local_volume_is(api: TestClient, nodes: list[Node]) -> None:
    data = volume_on(api, nodes, "data", "node-2")
    assert data["host_id"] == nodes[1].host_id
    # packing would choose node-1 (first by name, both empty): the volume decides
    plain = ok(api.post("/api/v1/instances", json={"image": "base", "name": "plain"}))
    assert plain["instances"][0]["host_id"] == nodes[0].host_id
    body = ok(
        api.post("/api/v1/instances", json={"image": "base", "name": "vm", "volumes": ["data"]})
    )
    assert body["instances"][0]["host_id"] == nodes[1].host_id
    finish(api, nodes, body["operation"]["id"])
    assert ok(api.get(f"{V}/data"), 200)["state"] == "in-use"


def test_volumes_of_two_hosts_local_pools_are_refused(api: TestClient, nodes: list[Node]) -> None:
    volume_on(api, nodes, "one", "node-1")
    volume_on(api, nodes, "two", "node-2")
    before = api.get("/api/v1/instances").json()["total"]
    resp = api.post(
        "/api/v1/instances", json={"image": "base", "name": "split", "volumes": ["one", "two"]}
    )
    assert resp.status_code == 409 and error(resp)["code"] == "volumes_on_different_hosts"
    assert "one and two" in error(resp)["message"]
    assert api.get("/api/v1/instances").json()["total"] == before
    assert {v["state"] for v in api.get(V).json()} == {"available"}


def test_a_disabled_volume_host_keeps_the_instance_pending_with_the_reason(
    api: TestClient, ctx: Ctx, nodes: list[Node]
) -> None:
    volume_on(api, nodes, "data", "node-2")
    api.post("/api/v1/hosts/node-2/state", json={"action": "disable"})
    body = ok(
        api.post("/api/v1/instances", json={"image": "base", "name": "vm", "volumes": ["data"]})
    )
    inst = body["instances"][0]
    assert inst["status"] == "pending" and inst["host_id"] is None
    assert "waiting for the host that holds its volumes: disabled" in inst["status_reason"]
    api.post("/api/v1/hosts/node-2/state", json={"action": "enable"})
    housekeeping(ctx)
    placed = api.get("/api/v1/instances/vm").json()
    assert placed["host_id"] == nodes[1].host_id and placed["status"] == "scheduled"
    settle(nodes, lambda: api.get("/api/v1/instances/vm").json()["status"] == "running")
