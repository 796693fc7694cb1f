"""nftables scripts and bridged-NIC domain XML: golden files plus structural checks.

A missing golden file is written by the test; ``STRATUS_REGENERATE=1`` rewrites them.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from stratuslab.drivers.base import DiskSpec, DomainSpec, NicSpec
from stratuslab.drivers.libvirt.domain_xml import domain_xml
from stratuslab.drivers.network.base import (
    DEFAULT_SECURITY_GROUP,
    Direction,
    IpProtocol,
    PortForward,
    SecuredPort,
    SecurityRule,
    bridge_name,
    tap_name,
)
from stratuslab.drivers.network.nftables import port_forward_script, security_group_script
from stratuslab.errors import Conflict, InvalidInput

DATA = Path(__file__).resolve().parent.parent / "data"
UUID = "6f1c2d3e-4b5a-4c6d-8e7f-901234567890"


def golden(name: str, actual: str) -> None:
    path = DATA / name
    if os.environ.get("STRATUS_REGENERATE") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert actual == path.read_text()


def ports() -> dict[str, tuple[SecuredPort, tuple[SecurityRule, ...]]]:
    web = SecuredPort(
        "st6f1c2d3e4n0",
        "02:00:c6:13:00:0a",
        (IPv4Address("198.19.0.10"),),
        (IPv6Address("fd00:5eed::a"),),
    )
    db = SecuredPort("st0a0b0c0d0n1", "02:00:c6:13:00:0b", (IPv4Address("198.19.0.11"),))
    web_rules = (
        *DEFAULT_SECURITY_GROUP,
        SecurityRule(Direction.INGRESS, IpProtocol.TCP, 80, 80),
        SecurityRule(Direction.INGRESS, IpProtocol.TCP, 8000, 8099, IPv4Network("198.18.0.0/15")),
        SecurityRule(Direction.INGRESS, IpProtocol.UDP, remote=IPv6Network("fd00:5eed::/48")),
    )
    db_rules = (
        SecurityRule(Direction.EGRESS, IpProtocol.UDP, 53, 53),
        SecurityRule(Direction.EGRESS, IpProtocol.ICMP, remote=IPv4Network("198.19.0.0/24")),
        SecurityRule(Direction.INGRESS, IpProtocol.TCP, 5432, remote=IPv4Network("198.19.0.10/32")),
    )
    return {web.ifname: (web, web_rules), db.ifname: (db, db_rules)}


def test_security_group_script_golden() -> None:
    golden("network/security-groups.nft", security_group_script(ports()))


def test_port_forward_script_golden() -> None:
    forwards = [
        PortForward(2222, IPv4Address("198.19.0.10"), 22),
        PortForward(
            5353, IPv4Address("198.19.0.11"), 53, IpProtocol.UDP, IPv4Address("198.18.0.1")
        ),
    ]
    golden("network/port-forwards.nft", port_forward_script(forwards))


def test_empty_state_only_deletes_the_tables() -> None:
    assert security_group_script({}) == (
        "add table bridge stratus_sg\ndelete table bridge stratus_sg\n"
        "add table inet stratus_sg\ndelete table inet stratus_sg\n"
    )
    assert port_forward_script([]) == "add table ip stratus_pat\ndelete table ip stratus_pat\n"


def test_every_port_ends_in_drop_both_ways() -> None:
    script = security_group_script(ports())
    for chain in ("egress_st6f1c2d3e4n0", "ingress_st6f1c2d3e4n0", "ingress_st0a0b0c0d0n1"):
        body = script.split(f"chain {chain} {{")[1].split("\n\t}")[0]
        assert body.strip().splitlines()[-1].strip() == "drop"
    assert "ip saddr 198.19.0.10/32 tcp dport 5432 accept" in script
    assert "udp dport 53 return" in script


def test_chain_name_clash_and_shared_address_are_refused() -> None:
    a = SecuredPort("tap.a", "02:00:00:00:00:01")
    b = SecuredPort("tap-a", "02:00:00:00:00:02")
    with pytest.raises(InvalidInput, match="same chain names"):
        security_group_script({"tap.a": (a, ()), "tap-a": (b, ())})
    c = SecuredPort("tapc", "02:00:00:00:00:03", (IPv4Address("198.19.0.9"),))
    d = SecuredPort("tapd", "02:00:00:00:00:04", (IPv4Address("198.19.0.9"),))
    with pytest.raises(Conflict, match="claimed by both"):
        security_group_script({"tapc": (c, ()), "tapd": (d, ())})


def test_device_names_fit_linux() -> None:
    assert bridge_name("blue") == "sbr-blue"
    long = bridge_name("a-very-long-network-name")
    assert long.startswith("sbr-") and len(long) == 15
    assert long == bridge_name("a-very-long-network-name")
    assert tap_name(UUID, 0) == "st6f1c2d3e4n0"
    assert len(tap_name(UUID, 9)) <= 15


def bridged_spec() -> DomainSpec:
    instances = Path("/var/lib/stratuslab/instances")
    return DomainSpec(
        uuid=UUID,
        name="stratus-web-1",
        vcpus=1,
        memory_mib=256,
        disks=(DiskSpec(path=instances / UUID / "root.qcow2"),),
        console_log=instances / UUID / "console.log",
        user_network=False,
        nics=(
            NicSpec(mac="02:00:c6:33:64:0a", bridge="sbr-public", target=tap_name(UUID, 0)),
            NicSpec(mac="02:00:c6:13:00:02", bridge="sbr-work", target=tap_name(UUID, 1)),
            NicSpec(mac="52:54:00:00:00:03", kind="user", model="e1000"),
        ),
    )


def test_bridged_domain_xml_golden() -> None:
    golden("domain_xml/bridged.xml", domain_xml(bridged_spec()))


def test_bridged_nics_name_their_taps() -> None:
    root = ET.fromstring(domain_xml(bridged_spec()))
    interfaces = root.findall("devices/interface")
    assert [i.get("type") for i in interfaces] == ["bridge", "bridge", "user"]
    first = interfaces[0]
    assert first.find("source") is not None and first.find("source").get("bridge") == "sbr-public"  # type: ignore[union-attr]
    assert first.find("target").get("dev") == "st6f1c2d3e4n0"  # type: ignore[union-attr]
    assert interfaces[2].find("target") is None


def test_bad_nic_kinds() -> None:
    from dataclasses import replace

    spec = bridged_spec()
    for nic in (NicSpec(mac="02:00:00:00:00:01"), NicSpec(mac="02:00:00:00:00:01", kind="tap")):
        with pytest.raises(InvalidInput, match="not valid"):
            domain_xml(replace(spec, nics=(nic,)))
