"""Host-dependent network state through the real app and two in-process agents (fake compute,
fake host network driver): VXLAN peers distributed by the controller, the image's declared
inbound ports forwarded at placement (PAT or QEMU user mode), what a move releases, and the
remote-group rules that follow an instance's delete."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from stratuslab.agent.loop import host_capacity
from stratuslab.agent.networks import AgentNetworks, FakeNics
from stratuslab.cli.context import AppContext
from stratuslab.cli.main import cli
from stratuslab.client import StratusClient
from stratuslab.db.models import Host, Image, Instance, PortForward
from stratuslab.drivers.base import PortForward as QemuForward
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.drivers.network.base import tap_name
from stratuslab.drivers.network.fake import FakeNetworkDriver
from stratuslab.schemas.agent import Heartbeat
from stratuslab.services import networks
from stratuslab.services.context import Ctx
from stratuslab.types import Hypervisor
from tests.integration.test_api import upload
from tests.integration.test_lifecycle import Node, start_node

P = "/api/v1"
PRIVATE = {"name": "proj", "cidr4": "198.18.30.0/24", "gateway4": "198.18.30.1", "driver": "vxlan"}
ONE = {"image": "base", "flavor": "t1.micro"}
UNDERLAY = {"node-a": "192.0.2.11", "node-b": "192.0.2.12"}


@dataclass
class Pair:
    nodes: dict[str, Node]
    #: host id -> the underlay address its agent announces
    underlay: dict[str, str]

    def where(self, api: TestClient, name: str) -> Node:
        host_id = api.get(f"{P}/instances/{name}").json()["host_id"]
        return next(n for n in self.nodes.values() if n.host_id == host_id)

    def settle(self) -> None:
        for node in self.nodes.values():
            node.settle()


def host_driver(node: Node) -> FakeNetworkDriver:
    driver = node.agent.reconciler.networks.driver
    assert isinstance(driver, FakeNetworkDriver)
    return driver


@pytest.fixture
def pair(api: TestClient) -> Iterator[Pair]:
    """Two hosts with room for one t1.micro each, announcing their underlay addresses."""
    nodes, addresses = {}, {}
    for name, address in UNDERLAY.items():
        token = api.post(f"{P}/hosts/tokens").json()["token"]
        compute = FakeComputeDriver(
            hostname=name, vcpus=1, memory_mib=768, hypervisor=Hypervisor.QEMU
        )
        node = start_node(api, token, driver=compute)
        nets = AgentNetworks(FakeNetworkDriver(), FakeNics(), vxlan_local=address)
        node.agent.reconciler.networks = nets
        # what the agent's heartbeat thread sends
        node.link.heartbeat(
            Heartbeat(capacity=host_capacity(compute, Path("/")), usage=nets.usage())
        )
        nodes[name], addresses[node.host_id] = node, address
    yield Pair(nodes, addresses)
    for node in nodes.values():
        node.link.close()


@pytest.fixture
def image(api: TestClient, qcow2_file: Path) -> dict[str, Any]:
    return upload(api, qcow2_file, "base")


def run(api: TestClient, name: str, *networks: str) -> dict[str, Any]:
    body = {**ONE, "name": name, "networks": list(networks)}
    resp = api.post(f"{P}/instances", json=body)
    assert resp.status_code == 202, resp.text
    vm: dict[str, Any] = resp.json()["instances"][0]
    return vm


def peers(node: Node, network: str) -> list[str]:
    desired = node.link.desired(since=-1, wait=0)
    return next(n.peers for n in desired.networks if n.name == network)


def generation(node: Node) -> int:
    return node.link.desired(since=-1, wait=0).generation


def test_vxlan_peers_come_from_the_controller_and_follow_the_instances(
    api: TestClient, pair: Pair, image: dict[str, Any]
) -> None:
    assert api.post(f"{P}/networks", json=PRIVATE).status_code == 201
    run(api, "one", "proj")
    first = pair.where(api, "one")
    assert peers(first, "proj") == [], "alone on the network: no peer"
    run(api, "two", "proj")
    second = pair.where(api, "two")
    assert second is not first, "one t1.micro per host"
    a, b = pair.underlay[first.host_id], pair.underlay[second.host_id]
    assert peers(first, "proj") == [b]
    assert peers(second, "proj") == [a]

    pair.settle()  # the agents program the peers (static flood entries)
    for node, other in ((first, b), (second, a)):
        vxlan = host_driver(node).specs["proj"].vxlan
        assert vxlan is not None and [str(p) for p in vxlan.peers] == [other]
        assert str(vxlan.local) == pair.underlay[node.host_id]

    before = generation(first)
    assert api.delete(f"{P}/instances/two").status_code == 202
    assert generation(first) > before, "the remaining host is told at once"
    assert peers(first, "proj") == []
    pair.settle()
    vxlan = host_driver(first).specs["proj"].vxlan
    assert vxlan is not None and vxlan.peers == ()
    assert "proj" not in host_driver(second).specs, "the network left the emptied host"


def test_a_host_without_underlay_address_is_no_peer(
    api: TestClient, pair: Pair, image: dict[str, Any]
) -> None:
    assert api.post(f"{P}/networks", json=PRIVATE).status_code == 201
    run(api, "one", "proj")
    run(api, "two", "proj")
    first, second = pair.where(api, "one"), pair.where(api, "two")
    silent = FakeComputeDriver(hostname="x", vcpus=1, memory_mib=768, hypervisor=Hypervisor.QEMU)
    second.link.heartbeat(Heartbeat(capacity=host_capacity(silent, Path("/")), usage={}))
    assert peers(first, "proj") == []
    assert peers(second, "proj") == [pair.underlay[first.host_id]]


def declare_ports(ctx: Ctx, image_id: str, ports: list[int]) -> None:
    with ctx.uow() as s:
        row = s.get(Image, image_id)
        assert row is not None
        row.metadata_draft = {**(row.metadata_draft or {}), "inbound_ports": ports}


def test_declared_inbound_ports_are_forwarded_at_placement(
    api: TestClient, ctx: Ctx, pair: Pair, image: dict[str, Any]
) -> None:
    declare_ports(ctx, image["id"], [443, 80, 22])
    lan = {"name": "lan", "cidr4": "198.18.31.0/24", "gateway4": "198.18.31.1"}
    assert api.post(f"{P}/networks", json=lan).status_code == 201
    vm = run(api, "pat", "lan")
    ip = vm["nics"][0]["ipv4"]
    shown = api.get(f"{P}/instances/pat").json()["port_forwards"]
    assert [(f["host_port"], f["target"], f["target_port"]) for f in shown] == [
        (30000, ip, 22),
        (30001, ip, 80),
        (30002, ip, 443),
    ], "SSH and the declared ports, on the instance's host"
    node = pair.where(api, "pat")
    node.settle()
    forwarded = sorted(
        (f.host_port, str(f.target), f.target_port) for f in host_driver(node).port_forwards()
    )
    assert forwarded == [(30000, ip, 22), (30001, ip, 80), (30002, ip, 443)]

    user = run(api, "user")  # no network: QEMU user mode, SSH on its own ssh_port
    shown = api.get(f"{P}/instances/user").json()
    assert [(f["host_port"], f["target_port"]) for f in shown["port_forwards"]] == [
        (30000, 80),
        (30001, 443),
    ], "the other host's PAT range"
    assert shown["ssh_port"] is not None
    other = pair.where(api, "user")
    assert other is not node
    desired = next(i for i in other.link.desired(since=-1, wait=0).instances if i.id == user["id"])
    assert other.agent.reconciler.networks.user_forwards(desired) == (
        QemuForward(host_port=30000, guest_port=80),
        QemuForward(host_port=30001, guest_port=443),
    )
    other.settle()
    assert host_driver(other).port_forwards() == [], "no nftables rule for QEMU's forwards"

    shown = show(api, "pat")  # `stratus show`
    assert "Port forwards" in shown
    assert all(f"{ip}:{port}" in shown for port in (22, 80, 443)), shown
    assert "30002" in shown
    assert "10.0.2.15:443" in show(api, "user")


def show(api: TestClient, name: str) -> str:
    token = api.headers["Authorization"].split()[1]
    app = AppContext(
        client_factory=lambda _s: StratusClient("http://testserver", token, http=api),
        sleep=lambda _s: None,
    )
    done = CliRunner().invoke(cli, ["show", name], obj=app, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return str(done.stdout)


def test_a_public_network_gets_no_pat_and_a_move_releases_the_host_ports(
    api: TestClient, ctx: Ctx, pair: Pair, image: dict[str, Any]
) -> None:
    declare_ports(ctx, image["id"], [8080])
    site = {"name": "site", "cidr4": "198.18.32.0/24", "address_class": "public"}
    assert api.post(f"{P}/networks", json=site).status_code == 201
    run(api, "direct", "site")
    assert api.get(f"{P}/instances/direct").json()["port_forwards"] == []

    assert api.post(f"{P}/networks", json=PRIVATE).status_code == 201
    vm = run(api, "mover", "proj")
    fixed = (vm["nics"][0]["mac"], vm["nics"][0]["ipv4"])
    api.post(f"{P}/instances/mover/port-forwards", json={"port": 9000})
    old = pair.where(api, "mover")
    new = next(n for n in pair.nodes.values() if n is not old)
    before = generation(old)
    # what HA restart and cold migration will do (services/instances.py)
    uow = ctx.uow()
    with uow as s:
        inst = s.scalar(select(Instance).where(Instance.name == "mover"))
        assert inst is not None
        networks.instance_moved(uow, inst, old.host_id)
        assert s.scalars(select(PortForward).where(PortForward.instance_id == inst.id)).all() == []
        inst.host_id, inst.ssh_port = new.host_id, None
        networks.instance_placed(uow, inst)
        networks.instance_placed(uow, inst)  # idempotent
    assert generation(old) > before
    shown = api.get(f"{P}/instances/mover").json()
    assert (shown["nics"][0]["mac"], shown["nics"][0]["ipv4"]) == fixed, "the lease stays"
    forwards = [(f["host_id"], f["target_port"]) for f in shown["port_forwards"]]
    assert sorted(forwards) == [(new.host_id, 22), (new.host_id, 8080), (new.host_id, 9000)]
    with ctx.uow() as s:
        names = {h.id: h.name for h in s.scalars(select(Host))}
    assert {f["host_name"] for f in shown["port_forwards"]} == {names[new.host_id]}


def test_deleting_an_instance_removes_it_from_remote_group_rules_at_once(
    api: TestClient, pair: Pair, image: dict[str, Any]
) -> None:
    lan = {"name": "lan", "cidr4": "198.18.33.0/24", "gateway4": "198.18.33.1"}
    assert api.post(f"{P}/networks", json=lan).status_code == 201
    assert api.post(f"{P}/security-groups", json={"name": "clients"}).status_code == 201
    assert api.post(f"{P}/security-groups", json={"name": "db"}).status_code == 201
    rule = {"direction": "ingress", "protocol": "tcp", "port_min": 5432, "remote_group": "clients"}
    assert api.post(f"{P}/security-groups/db/rules", json=rule).status_code == 201
    server = api.post(
        f"{P}/instances",
        json={**ONE, "name": "server", "networks": ["lan"], "security_group": "db"},
    ).json()["instances"][0]
    client = api.post(
        f"{P}/instances",
        json={**ONE, "name": "client", "networks": ["lan"], "security_group": "clients"},
    ).json()["instances"][0]
    host = pair.where(api, "server")
    assert pair.where(api, "client") is not host, "the rule must reach another host"
    pair.settle()
    tap = tap_name(server["id"], 0)
    remote = f"{client['nics'][0]['ipv4']}/32"

    def remotes() -> list[str]:
        applied = host_driver(host).security_group(tap) or ()
        return [str(r.remote) for r in applied if r.port_min == 5432]

    assert remotes() == [remote]
    before = generation(host)
    assert api.delete(f"{P}/instances/client").status_code == 202
    assert generation(host) > before, "the server's host is told at once"
    desired = next(i for i in host.link.desired(since=-1, wait=0).instances if i.name == "server")
    assert [r.remote for r in desired.nics[0].rules if r.port_min == 5432] == []
    host.settle()
    assert remotes() == [], "the deleted client's address left the server's rules"
