"""Two "hosts" (network namespaces joined by a veth underlay) carry a private network over VXLAN.

Topology (everything inside namespaces this test creates)::

    inst-a .0.10 ── host-1 sbr-work  + svx-100 ═╗ underlay veth ╔═ host-2 sbr-work  ── inst-b .0.20
    inst-d .0.40 ── host-1 sbr-other + svx-200 ═╩ 198.18.0.1/2 ╩═ host-2 sbr-other ── inst-c .0.30

a reaches b over VNI 100 and d reaches c over VNI 200; across VNIs nothing passes although all
four addresses are in one subnet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stratuslab.agent.loop import host_capacity
from stratuslab.agent.networks import AgentNetworks
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.drivers.network.base import HostNetworkSpec, VxlanSpec
from stratuslab.drivers.network.linux import LinuxNetworkDriver
from stratuslab.schemas.agent import Heartbeat
from stratuslab.types import Hypervisor
from tests.integration.test_api import upload
from tests.integration.test_lifecycle import Node, start_node
from tests.netns import Netns, NetnsLab, netns_lab, require_root_tools

pytestmark = pytest.mark.functional
UNDERLAY = (IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"))


@dataclass
class Pair:
    lab: NetnsLab
    hosts: tuple[Netns, Netns]
    drivers: tuple[LinuxNetworkDriver, LinuxNetworkDriver]


def network(host: int, vni: int = 100, name: str = "work", peers: bool = True) -> HostNetworkSpec:
    me, other = UNDERLAY[host], UNDERLAY[1 - host]
    return HostNetworkSpec(
        name=name,
        bridge=f"sbr-{name}",
        # Only VNI 100 gives the bridges addresses: two bridges of one host in one subnet would
        # confuse the host's routing, not the segments.
        address=IPv4Interface(f"198.19.0.{host + 1}/24") if vni == 100 else None,
        mtu=1450,
        dhcp=False,
        vxlan=VxlanSpec(vni, me, (other,) if peers else (), underlay="under0"),
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    require_root_tools("nft", "busybox")
    with netns_lab() as lab:
        h1, h2 = lab.namespace("h1"), lab.namespace("h2")
        lab.veth(h1, "under0", h2, "under0")
        h1.ip("addr", "add", f"{UNDERLAY[0]}/24", "dev", "under0")
        h2.ip("addr", "add", f"{UNDERLAY[1]}/24", "dev", "under0")
        drivers = tuple(
            LinuxNetworkDriver(state_dir=lab.state_dir(ns.name), netns=ns.name, manage_sysctls=True)
            for ns in (h1, h2)
        )
        yield Pair(lab, (h1, h2), drivers)  # type: ignore[arg-type]


def attach(pair: Pair, host: int, network: str, label: str, address: str, mac: str) -> Netns:
    """An instance namespace plugged into ``network`` on ``host`` through the driver."""
    ns = pair.lab.instance(pair.hosts[host], f"vi-{label}", label, mac=mac)
    pair.drivers[host].plug(network, f"vi-{label}")
    ns.ip("link", "set", "eth0", "mtu", "1450")
    ns.ip("addr", "add", f"{address}/24", "dev", "eth0")
    return ns


def vxlan_packets(host: Netns, device: str) -> int:
    stats = json.loads(host.ip("-json", "-s", "link", "show", device))[0]["stats64"]
    return int(stats["tx"]["packets"]) + int(stats["rx"]["packets"])


def test_private_network_spans_two_hosts_and_vnis_are_isolated(pair: Pair) -> None:
    d1, d2 = pair.drivers
    d1.ensure_network(network(0))
    d2.ensure_network(network(1))
    d1.ensure_network(network(0, vni=200, name="other"))
    d2.ensure_network(network(1, vni=200, name="other"))
    a = attach(pair, 0, "work", "a", "198.19.0.10", "02:00:c6:13:00:0a")
    b = attach(pair, 1, "work", "b", "198.19.0.20", "02:00:c6:13:00:14")
    c = attach(pair, 1, "other", "c", "198.19.0.30", "02:00:c6:13:00:1e")
    d = attach(pair, 0, "other", "d", "198.19.0.40", "02:00:c6:13:00:28")

    before = vxlan_packets(pair.hosts[0], "svx-100")
    assert a.ping("198.19.0.20", count=2), "inst-a must reach inst-b across hosts"
    assert b.ping("198.19.0.10")
    assert vxlan_packets(pair.hosts[0], "svx-100") > before, "traffic must cross VXLAN 100"
    b.serve_tcp("198.19.0.20", 7000)
    assert a.tcp_connect("198.19.0.20", 7000) == f"hello from {b.name} to 198.19.0.10"

    assert not a.ping("198.19.0.30"), "VNI 200 must be unreachable from VNI 100"
    assert not c.ping("198.19.0.10")
    assert not d.ping("198.19.0.20")
    assert c.ping("198.19.0.40"), "VNI 200 spans the hosts too"

    # Peers are static FDB entries: dropping the peer cuts the segment, adding it restores it.
    d1.ensure_network(network(0, peers=False))
    assert not a.ping("198.19.0.20")
    d1.ensure_network(network(0))
    assert a.ping("198.19.0.20", count=2)

    for driver, ns_list in ((d1, ["vi-a", "vi-d"]), (d2, ["vi-b", "vi-c"])):
        for ifname in ns_list:
            driver.unplug(ifname)
        for name in driver.networks():
            driver.remove_network(name)
        assert driver.networks() == []
    links = [link["ifname"] for link in json.loads(pair.hosts[1].ip("-json", "link", "show"))]
    assert not [name for name in links if name.startswith(("sbr-", "svx-"))]


def test_changing_the_vni_recreates_the_vxlan_device(pair: Pair) -> None:
    d1, _ = pair.drivers
    d1.ensure_network(network(0))
    spec = network(0)
    assert spec.vxlan is not None
    d1.ensure_network(replace(spec, vxlan=replace(spec.vxlan, vni=101)))
    links = json.loads(pair.hosts[0].ip("-json", "-d", "link", "show", "svx-101"))
    assert links[0]["linkinfo"]["info_data"]["id"] == 101
    assert links[0]["master"] == "sbr-work"
    assert pair.hosts[0].run(["ip", "link", "show", "svx-100"], check=False).returncode != 0
    d1.remove_network("work")


# -- peers from the controller ---------------------------------------------------------------


def test_peers_come_from_the_controllers_desired_state(
    pair: Pair, api: TestClient, qcow2_file: Path
) -> None:
    """The same two namespace "hosts", now agents of a real controller (in-process app,
    SQLite; fake compute): each host's desired state names the other's underlay address as
    the VXLAN peer, the agent's networking programs it, and deleting the instance on one host
    takes the peer (and so the segment) away from the other."""
    upload(api, qcow2_file, "base")
    agents: list[tuple[Node, AgentNetworks]] = []
    for index, host in enumerate(pair.hosts):
        token = api.post("/api/v1/hosts/tokens").json()["token"]
        compute = FakeComputeDriver(
            hostname=f"vx-{index}", vcpus=1, memory_mib=768, hypervisor=Hypervisor.QEMU
        )
        node = start_node(api, token, driver=compute)
        nets = AgentNetworks(
            pair.drivers[index], None, netns=host.name, vxlan_local=str(UNDERLAY[index])
        )
        node.link.heartbeat(
            Heartbeat(capacity=host_capacity(compute, Path("/")), usage=nets.usage())
        )
        agents.append((node, nets))
    body = {
        "name": "work",
        "cidr4": "198.19.0.0/24",
        "gateway4": "198.19.0.1",
        "driver": "vxlan",
        "mtu": 1450,
    }
    assert api.post("/api/v1/networks", json=body).status_code == 201
    vms = []
    for label in ("a", "b"):
        resp = api.post(
            "/api/v1/instances",
            json={"image": "base", "flavor": "t1.micro", "name": label, "networks": ["work"]},
        )
        assert resp.status_code == 202, resp.text
        vms.append(resp.json()["instances"][0])
    on = {vm["host_id"]: vm for vm in vms}
    assert len(on) == 2, "one instance per host"

    def converge() -> None:
        for node, nets in agents:
            desired = node.link.desired(since=-1, wait=0)
            assert nets.ensure_networks(desired) == []
            nets.finish(desired)

    converge()
    ends = []
    for index, (node, _) in enumerate(agents):
        vm = on[node.host_id]
        nic = vm["nics"][0]
        ends.append(attach(pair, index, "work", vm["name"], nic["ipv4"], nic["mac"]))
    fdb = pair.hosts[0].run(["bridge", "fdb", "show", "dev", "svx-10000"]).stdout
    assert f"00:00:00:00:00:00 dst {UNDERLAY[1]}" in fdb, fdb
    there = on[agents[1][0].host_id]["nics"][0]["ipv4"]
    assert ends[0].ping(there, count=2), "the segment spans the hosts through the peers given"

    api.delete(f"/api/v1/instances/{on[agents[1][0].host_id]['id']}")
    converge()
    fdb = pair.hosts[0].run(["bridge", "fdb", "show", "dev", "svx-10000"]).stdout
    assert f"00:00:00:00:00:00 dst {UNDERLAY[1]}" not in fdb, fdb
    # b's namespace is still plugged on host 2, but host 1 no longer floods to it: a fresh
    # ARP request cannot reach b any more
    ends[0].ip("neigh", "flush", "all")
    assert not ends[0].ping(there), "no peer, no segment"
    for index, (node, _) in enumerate(agents):
        pair.drivers[index].unplug(f"vi-{on[node.host_id]['name']}")
        node.link.close()
