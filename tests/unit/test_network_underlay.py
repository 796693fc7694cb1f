"""The underlay address in heartbeats, VXLAN peers into host specs, user-mode forwards."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from stratuslab.agent.networks import AgentNetworks, FakeNics, host_spec, underlay_address
from stratuslab.config import NodeSettings
from stratuslab.drivers.base import PortForward as QemuForward
from stratuslab.drivers.network.fake import FakeNetworkDriver
from stratuslab.networks import underlay
from stratuslab.schemas.agent import (
    DesiredForward,
    DesiredInstance,
    DesiredNetwork,
    DesiredNic,
    DesiredState,
    ImageRef,
)


def test_underlay_address_round_trips_through_heartbeat_usage() -> None:
    usage = underlay.encode("192.0.2.11")
    assert set(usage) == {underlay.USAGE_KEY}
    assert underlay.decode({"load1": 0.5, **usage}) == "192.0.2.11"
    assert underlay.decode(dict(underlay.encode("255.255.255.254"))) == "255.255.255.254"
    assert underlay.encode("") == underlay.encode(None) == underlay.encode("2001:db8::1") == {}
    assert underlay.encode("not an address") == {}
    for bad in ({}, None, {underlay.USAGE_KEY: True}, {underlay.USAGE_KEY: -1.0}, {"x": 1.0}):
        assert underlay.decode(bad) is None
    assert underlay.decode({underlay.USAGE_KEY: float(2**33)}) is None


def test_the_default_underlay_is_never_a_loopback_address(tmp_path: Path) -> None:
    assert underlay.route_source("http://127.0.0.1:8080") is None
    assert underlay.route_source("not a url") is None
    local = NodeSettings(state_dir=tmp_path, controller_url="http://127.0.0.1:1")
    assert underlay_address(local) is None, "an all-in-one cloud announces no underlay"
    given = NodeSettings(state_dir=tmp_path, network_underlay="192.0.2.7")
    assert underlay_address(given) == "192.0.2.7"
    in_netns = NodeSettings(state_dir=tmp_path, network_netns="x", controller_url="http://a:1")
    assert underlay_address(in_netns) is None, "tests name the underlay themselves"


def vxlan(peers: list[str]) -> DesiredNetwork:
    return DesiredNetwork(
        name="proj",
        driver="vxlan",
        address_class="private",
        cidr4="198.18.30.0/24",
        gateway4="198.18.30.1",
        vni=10000,
        peers=peers,
    )


def test_peers_of_the_desired_state_become_the_vxlan_flood_list() -> None:
    spec = host_spec(vxlan(["192.0.2.12", "192.0.2.11", "192.0.2.13"]), vxlan_local="192.0.2.11")
    assert spec.vxlan is not None
    assert spec.vxlan.local == IPv4Address("192.0.2.11")
    assert spec.vxlan.peers == (IPv4Address("192.0.2.12"), IPv4Address("192.0.2.13"))
    alone = host_spec(vxlan([]), vxlan_local="192.0.2.11")
    assert alone.vxlan is not None and alone.vxlan.peers == ()


def instance(**fields: object) -> DesiredInstance:
    base: dict[str, object] = {
        "id": "6f1c2d3e-0000-4000-8000-000000000001",
        "name": "vm",
        "hostname": "vm",
        "generation": 1,
        "desired": "running",
        "vcpus": 1,
        "memory_mib": 512,
        "image": ImageRef(id="i", sha256="0" * 64, format="qcow2", size_bytes=1),
        "ssh_port": 22000,
        "ssh_keys": [],
        "user_data": None,
        "reboot_seq": 0,
        "reboot_hard": False,
        "stop_timeout": 5.0,
    }
    return DesiredInstance.model_validate({**base, **fields})


def test_user_mode_forwards_go_to_qemu_and_not_to_nftables() -> None:
    driver = FakeNetworkDriver()
    nets = AgentNetworks(driver, FakeNics(), vxlan_local="192.0.2.11")
    assert nets.usage() == underlay.encode("192.0.2.11")
    assert AgentNetworks(None, None, vxlan_local="192.0.2.11").usage() == {}
    web = DesiredForward(
        protocol="tcp", host_port=30000, target="10.0.2.15", target_port=80, user_mode=True
    )
    user = instance(port_forwards=[web])
    assert nets.user_forwards(user) == (QemuForward(host_port=30000, guest_port=80),)
    nic = DesiredNic(index=0, network="lab", mac="02:00:c6:12:00:0a", ipv4="198.18.10.10")
    bridged = instance(nics=[nic], port_forwards=[web.model_copy(update={"user_mode": False})])
    assert nets.user_forwards(bridged) == ()
    state = DesiredState(host_id="h", generation=1, instances=[user])
    assert nets.finish(state) == []
    assert driver.port_forwards() == [], "QEMU forwards them, nftables does not"
