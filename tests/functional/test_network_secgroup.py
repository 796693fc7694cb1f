"""Security groups on a real bridge: a TCP connection is blocked, allowed, blocked again.

One "host" namespace holds the network's bridge; two "instance" namespaces are plugged into it
with veth pairs (the host-side ends stand for the guests' taps). The rules live in the driver's
``stratus_sg`` tables inside the host namespace.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from stratuslab.drivers.network.base import (
    DEFAULT_SECURITY_GROUP,
    Direction,
    HostNetworkSpec,
    IpProtocol,
    SecuredPort,
    SecurityRule,
)
from stratuslab.drivers.network.linux import LinuxNetworkDriver
from tests.netns import Netns, netns_lab, require_root_tools

pytestmark = pytest.mark.functional
SERVER = SecuredPort("vi-srv", "02:00:c6:13:01:14", (IPv4Address("198.19.1.20"),))
CLIENT = SecuredPort("vi-cli", "02:00:c6:13:01:0a", (IPv4Address("198.19.1.10"),))


@dataclass
class Site:
    host: Netns
    driver: LinuxNetworkDriver
    server: Netns
    client: Netns


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    require_root_tools("nft", "busybox")
    with netns_lab() as lab:
        host = lab.namespace("host")
        driver = LinuxNetworkDriver(
            state_dir=lab.state_dir("host"), netns=host.name, manage_sysctls=True
        )
        driver.ensure_network(
            HostNetworkSpec(
                name="web", bridge="sbr-web", address=IPv4Interface("198.19.1.1/24"), dhcp=False
            )
        )
        members = []
        for port, label in ((SERVER, "srv"), (CLIENT, "cli")):
            ns = lab.instance(host, port.ifname, label, mac=port.mac)
            ns.ip("addr", "add", f"{port.ipv4[0]}/24", "dev", "eth0")
            driver.plug("web", port.ifname)
            members.append(ns)
        yield Site(host, driver, *members)


def test_rule_changes_block_and_allow_a_real_tcp_connection(site: Site) -> None:
    site.server.serve_tcp("0.0.0.0", 8080)
    site.server.serve_tcp("0.0.0.0", 22)
    greeting = f"hello from {site.server.name} to 198.19.1.10"
    assert site.client.tcp_connect("198.19.1.20", 8080) == greeting  # no group yet

    site.driver.apply_security_group(SERVER, DEFAULT_SECURITY_GROUP)
    assert site.client.tcp_connect("198.19.1.20", 8080, timeout=1) is None, "8080 is not open"
    assert site.client.tcp_connect("198.19.1.20", 22) == greeting, "SSH is open by default"
    assert site.client.ping("198.19.1.20"), "ICMP is open by default"

    web = SecurityRule(Direction.INGRESS, IpProtocol.TCP, 8080, 8080, IPv4Network("198.19.1.10/32"))
    started = time.perf_counter()
    site.driver.apply_security_group(SERVER, (*DEFAULT_SECURITY_GROUP, web))
    print(f"security group change applied in {1000 * (time.perf_counter() - started):.0f} ms")
    assert site.client.tcp_connect("198.19.1.20", 8080) == greeting, "allowed after the change"

    site.driver.apply_security_group(SERVER, DEFAULT_SECURITY_GROUP)
    assert site.client.tcp_connect("198.19.1.20", 8080, timeout=1) is None, "blocked again"

    site.driver.remove_security_group("vi-srv")
    assert site.client.tcp_connect("198.19.1.20", 8080) == greeting


def test_egress_rules_and_remote_cidrs(site: Site) -> None:
    site.server.serve_tcp("0.0.0.0", 22)
    greeting = f"hello from {site.server.name} to 198.19.1.10"
    dns_only = (SecurityRule(Direction.EGRESS, IpProtocol.UDP, 53, 53),)
    site.driver.apply_security_group(CLIENT, dns_only)
    assert site.client.tcp_connect("198.19.1.20", 22, timeout=1) is None, "egress is closed"
    assert not site.client.ping("198.19.1.20")
    assert site.client.ping("198.19.1.1"), "the host itself (gateway, DHCP) stays reachable"

    to_server = SecurityRule(Direction.EGRESS, remote=IPv4Network("198.19.1.20/32"))
    site.driver.apply_security_group(CLIENT, (*dns_only, to_server))
    assert site.client.tcp_connect("198.19.1.20", 22) == greeting

    other_remote = SecurityRule(
        Direction.INGRESS, IpProtocol.TCP, 22, 22, IPv4Network("198.19.1.99/32")
    )
    site.driver.apply_security_group(SERVER, (other_remote,))
    assert site.client.tcp_connect("198.19.1.20", 22, timeout=1) is None, "wrong remote CIDR"


def test_spoofed_source_addresses_are_dropped(site: Site) -> None:
    """Rules match on addresses, so an instance must not borrow another one's address."""
    site.server.serve_tcp("0.0.0.0", 22)
    site.driver.apply_security_group(CLIENT, DEFAULT_SECURITY_GROUP)
    site.driver.apply_security_group(SERVER, DEFAULT_SECURITY_GROUP)
    assert site.client.tcp_connect("198.19.1.20", 22) is not None
    site.client.ip("addr", "add", "198.19.1.77/24", "dev", "eth0")
    site.client.ip("addr", "del", "198.19.1.10/24", "dev", "eth0")
    assert site.client.tcp_connect("198.19.1.20", 22, timeout=1) is None
    assert not site.client.ping("198.19.1.1")
