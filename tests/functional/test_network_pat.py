"""Port address translation: a TCP connection to the host's port reaches the instance's port.

outside 198.18.1.2 ── veth ── host 198.18.1.1 [stratus_pat: DNAT]
                              host sbr-pat 198.19.2.1 ── inst 198.19.2.10
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from stratuslab.drivers.network.base import (
    DEFAULT_SECURITY_GROUP,
    HostNetworkSpec,
    PortForward,
    SecuredPort,
)
from stratuslab.drivers.network.linux import LinuxNetworkDriver
from tests.netns import Netns, netns_lab, require_root_tools

pytestmark = pytest.mark.functional
INSTANCE = SecuredPort("vi-pat", "02:00:c6:13:02:0a", (IPv4Address("198.19.2.10"),))
SSH = PortForward(2222, INSTANCE.ipv4[0], 22)


@dataclass
class Site:
    host: Netns
    driver: LinuxNetworkDriver
    instance: Netns
    outside: Netns


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    require_root_tools("nft")
    with netns_lab() as lab:
        host, outside = lab.namespace("host"), lab.namespace("out")
        lab.veth(host, "wan0", outside, "wan0")
        host.ip("addr", "add", "198.18.1.1/24", "dev", "wan0")
        outside.ip("addr", "add", "198.18.1.2/24", "dev", "wan0")
        driver = LinuxNetworkDriver(
            state_dir=lab.state_dir("host"), netns=host.name, manage_sysctls=True
        )
        driver.ensure_network(
            HostNetworkSpec(
                name="pat",
                bridge="sbr-pat",
                address=IPv4Interface("198.19.2.1/24"),
                gateway=IPv4Address("198.19.2.1"),
                dhcp=False,
            )
        )
        instance = lab.instance(host, INSTANCE.ifname, "inst", mac=INSTANCE.mac)
        instance.ip("addr", "add", "198.19.2.10/24", "dev", "eth0")
        instance.ip("route", "add", "default", "via", "198.19.2.1")
        driver.plug("pat", INSTANCE.ifname)
        instance.serve_tcp("0.0.0.0", 22)
        instance.serve_tcp("0.0.0.0", 8080)
        yield Site(host, driver, instance, outside)


def test_host_port_reaches_the_instance(site: Site) -> None:
    assert site.outside.tcp_connect("198.18.1.1", 2222, timeout=1) is None  # nothing forwarded
    site.driver.ensure_port_forward(SSH)
    greeting = site.outside.tcp_connect("198.18.1.1", 2222)
    assert greeting == f"hello from {site.instance.name} to 198.18.1.2", "DNAT, no SNAT"
    # From the host itself (output chain), to its own outside address.
    assert site.host.tcp_connect("198.18.1.1", 2222) is not None

    site.driver.remove_port_forward(SSH)
    assert site.outside.tcp_connect("198.18.1.1", 2222, timeout=1) is None


def test_forward_on_one_host_address_only(site: Site) -> None:
    site.host.ip("addr", "add", "198.18.1.3/24", "dev", "wan0")
    web = PortForward(8000, INSTANCE.ipv4[0], 8080, host_address=IPv4Address("198.18.1.3"))
    site.driver.ensure_port_forward(web)
    assert site.outside.tcp_connect("198.18.1.3", 8000) is not None
    assert site.outside.tcp_connect("198.18.1.1", 8000, timeout=1) is None


def test_security_group_still_guards_forwarded_ports(site: Site) -> None:
    site.driver.apply_security_group(INSTANCE, DEFAULT_SECURITY_GROUP)
    site.driver.ensure_port_forward(SSH)
    site.driver.ensure_port_forward(PortForward(8000, INSTANCE.ipv4[0], 8080))
    assert site.outside.tcp_connect("198.18.1.1", 2222) is not None, "SSH is allowed"
    assert site.outside.tcp_connect("198.18.1.1", 8000, timeout=1) is None, "8080 is not"
    assert site.driver.port_forwards() == [SSH, PortForward(8000, INSTANCE.ipv4[0], 8080)]
