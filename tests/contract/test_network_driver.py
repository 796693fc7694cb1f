"""One suite, every host networking driver: the fake and the Linux one inside a throwaway
network namespace (root, iproute2, nftables and dnsmasq needed; skipped otherwise).

Deliberate differences, and how the suite absorbs them: the fake has no kernel, so "an
interface that exists" is one the fixture's ``make_interface`` registered (for the Linux driver
it creates a veth pair in the namespace); the fake reports DHCP as running whenever the
network serves DHCP, the Linux driver when its dnsmasq process is alive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface
from pathlib import Path

import pytest

from stratuslab.drivers.network.base import (
    DEFAULT_SECURITY_GROUP,
    DhcpHost,
    Direction,
    HostNetworkDriver,
    HostNetworkSpec,
    IpProtocol,
    PortForward,
    SecuredPort,
    SecurityRule,
    VxlanSpec,
)
from stratuslab.drivers.network.fake import FakeNetworkDriver
from stratuslab.drivers.network.linux import LinuxNetworkDriver
from stratuslab.errors import Conflict, DriverError, InvalidInput, NotFound
from tests.netns import netns_lab, require_root_tools


@dataclass
class Rig:
    driver: HostNetworkDriver
    make_interface: Callable[[str], None]


@pytest.fixture(params=["fake", "linux"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    if request.param == "fake":
        fake = FakeNetworkDriver()
        yield Rig(fake, lambda name: fake.interfaces.setdefault(name, None) and None)
        return
    require_root_tools("nft", "dnsmasq")
    with netns_lab() as lab:
        ns = lab.namespace("ct")
        driver = LinuxNetworkDriver(
            state_dir=lab.state_dir("ct"), netns=ns.name, manage_sysctls=True
        )

        def make_interface(name: str) -> None:  # no dummy devices here: a veth pair stands in
            ns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")

        yield Rig(driver, make_interface)
        for name in driver.networks():  # the namespace goes anyway; this also stops dnsmasq
            for port in driver.status(name).ports:
                driver.unplug(port)
            driver.remove_network(name)


def net(name: str = "blue", third: int = 1, **changes: object) -> HostNetworkSpec:
    spec = HostNetworkSpec(
        name=name,
        bridge=f"sbr-{name}",
        address=IPv4Interface(f"198.19.{third}.1/24"),
        gateway=IPv4Address(f"198.19.{third}.1"),
        dns=(IPv4Address(f"198.19.{third}.1"),),
        dhcp_hosts=(DhcpHost("02:00:c6:13:01:0a", IPv4Address(f"198.19.{third}.10"), "vm-a"),),
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


def port(ifname: str = "tapa", last: int = 10) -> SecuredPort:
    return SecuredPort(ifname, f"02:00:c6:13:01:{last:02x}", (IPv4Address(f"198.19.1.{last}"),))


def test_is_a_host_network_driver(rig: Rig) -> None:
    assert isinstance(rig.driver, HostNetworkDriver)


def test_ensure_network_is_idempotent_and_listed(rig: Rig) -> None:
    rig.driver.ensure_network(net())
    rig.driver.ensure_network(net())
    assert rig.driver.networks() == ["blue"]
    status = rig.driver.status("blue")
    assert (status.bridge, status.up, status.ports, status.dhcp_running) == (
        "sbr-blue",
        True,
        (),
        True,
    )


def test_reservations_change_without_losing_the_network(rig: Rig) -> None:
    rig.driver.ensure_network(net())
    more = (*net().dhcp_hosts, DhcpHost("02:00:c6:13:01:0b", IPv4Address("198.19.1.11")))
    rig.driver.ensure_network(net(dhcp_hosts=more))
    assert rig.driver.status("blue").dhcp_running
    rig.driver.ensure_network(net(dhcp=False))
    assert not rig.driver.status("blue").dhcp_running


def test_dual_stack_network_sends_router_advertisements(rig: Rig) -> None:
    rig.driver.ensure_network(net(address6=IPv6Interface("fd00:5eed:1::1/64")))
    assert rig.driver.status("blue").dhcp_running


def test_two_networks_with_dhcp_side_by_side(rig: Rig) -> None:
    rig.driver.ensure_network(net("blue", 1))
    rig.driver.ensure_network(net("green", 2, vxlan=VxlanSpec(42, IPv4Address("198.18.0.1"))))
    assert rig.driver.networks() == ["blue", "green"]
    assert all(rig.driver.status(name).dhcp_running for name in ("blue", "green"))


def test_bridge_cannot_be_renamed_or_shared(rig: Rig) -> None:
    rig.driver.ensure_network(net())
    with pytest.raises(Conflict, match="uses bridge sbr-blue"):
        rig.driver.ensure_network(net(bridge="sbr-other"))
    with pytest.raises(Conflict, match="belongs to network blue"):
        rig.driver.ensure_network(net("red", 3, bridge="sbr-blue"))
    assert rig.driver.networks() == ["blue"]


def test_plain_uplink(rig: Rig) -> None:
    rig.make_interface("phys0")
    rig.driver.ensure_network(net(uplink="phys0"))
    assert rig.driver.status("blue").ports == ()
    rig.driver.remove_network("blue")
    rig.driver.ensure_network(net("green", uplink="phys0"))
    rig.driver.remove_network("green")


def test_missing_uplink_changes_nothing(rig: Rig) -> None:
    with pytest.raises(NotFound, match="uplink"):
        rig.driver.ensure_network(net(uplink="nosuchif0"))
    assert rig.driver.networks() == []


def test_uplink_with_vlan(rig: Rig) -> None:
    rig.make_interface("trunk0")
    try:
        rig.driver.ensure_network(net(uplink="trunk0", vlan=120))
    except DriverError as exc:
        message = str(exc)
        assert rig.driver.networks() == []  # the half-made network was rolled back
        assert "no 802.1Q VLAN support" in message
        pytest.skip(message)
    rig.driver.ensure_network(net(uplink="trunk0", vlan=121))
    assert rig.driver.status("blue").ports == ()  # the VLAN device is not an instance port
    rig.driver.remove_network("blue")
    assert rig.driver.networks() == []


def test_plug_and_unplug(rig: Rig) -> None:
    rig.driver.ensure_network(net())
    with pytest.raises(NotFound, match="network nope"):
        rig.driver.plug("nope", "tapa", create_tap=True)
    with pytest.raises(NotFound, match="does not exist"):
        rig.driver.plug("blue", "tapa")
    rig.driver.plug("blue", "tapa", create_tap=True)
    rig.driver.plug("blue", "tapa", create_tap=True)
    rig.make_interface("veth7")
    rig.driver.plug("blue", "veth7")
    assert rig.driver.status("blue").ports == ("tapa", "veth7")
    rig.driver.unplug("tapa")
    rig.driver.unplug("tapa")
    rig.driver.unplug("veth7")
    assert rig.driver.status("blue").ports == ()
    rig.driver.plug("blue", "veth7")  # an interface plug() did not create survives unplug()
    assert rig.driver.status("blue").ports == ("veth7",)
    rig.driver.unplug("veth7")


def test_network_in_use_cannot_be_removed(rig: Rig) -> None:
    rig.driver.ensure_network(net())
    rig.driver.plug("blue", "tapa", create_tap=True)
    with pytest.raises(Conflict, match="in use by tapa"):
        rig.driver.remove_network("blue")
    assert rig.driver.networks() == ["blue"]
    rig.driver.unplug("tapa")
    rig.driver.remove_network("blue")
    rig.driver.remove_network("blue")
    assert rig.driver.networks() == []
    with pytest.raises(NotFound):
        rig.driver.status("blue")


def test_port_forwards(rig: Rig) -> None:
    ssh = PortForward(2201, IPv4Address("198.19.1.10"), 22)
    web = PortForward(8080, IPv4Address("198.19.1.11"), 80, host_address=IPv4Address("198.18.0.1"))
    dns = PortForward(2201, IPv4Address("198.19.1.10"), 53, IpProtocol.UDP)
    for forward in (web, ssh, ssh, dns):
        rig.driver.ensure_port_forward(forward)
    assert rig.driver.port_forwards() == [ssh, web, dns]
    with pytest.raises(Conflict, match=r"already forwards to 198\.19\.1\.10:22"):
        rig.driver.ensure_port_forward(PortForward(2201, IPv4Address("198.19.1.12"), 22))
    rig.driver.remove_port_forward(ssh)
    rig.driver.remove_port_forward(ssh)
    assert rig.driver.port_forwards() == [web, dns]
    rig.driver.remove_port_forward(web)
    rig.driver.remove_port_forward(dns)
    assert rig.driver.port_forwards() == []


def test_security_groups_replace_and_remove(rig: Rig) -> None:
    web = SecurityRule(Direction.INGRESS, IpProtocol.TCP, 80, 80, IPv4Network("198.18.0.0/15"))
    rig.driver.apply_security_group(port(), DEFAULT_SECURITY_GROUP)
    rig.driver.apply_security_group(port("tapb", 11), DEFAULT_SECURITY_GROUP)
    assert rig.driver.security_group("tapa") == DEFAULT_SECURITY_GROUP
    rig.driver.apply_security_group(port(), (*DEFAULT_SECURITY_GROUP, web))
    assert rig.driver.security_group("tapa") == (*DEFAULT_SECURITY_GROUP, web)
    rig.driver.remove_security_group("tapa")
    rig.driver.remove_security_group("tapa")
    assert rig.driver.security_group("tapa") is None
    assert rig.driver.security_group("tapb") == DEFAULT_SECURITY_GROUP
    rig.driver.remove_security_group("tapb")


def test_an_address_belongs_to_one_port(rig: Rig) -> None:
    rig.driver.apply_security_group(port(), DEFAULT_SECURITY_GROUP)
    thief = SecuredPort("tapc", "02:00:c6:13:01:0c", (IPv4Address("198.19.1.10"),))
    with pytest.raises(Conflict, match=r"198\.19\.1\.10 is claimed"):
        rig.driver.apply_security_group(thief, ())
    assert rig.driver.security_group("tapc") is None
    assert rig.driver.security_group("tapa") == DEFAULT_SECURITY_GROUP
    rig.driver.remove_security_group("tapa")


def test_specs_refuse_bad_input() -> None:
    with pytest.raises(InvalidInput, match="not a valid Linux interface name"):
        net(bridge="a-bridge-name-too-long")
    with pytest.raises(InvalidInput, match=r"outside 198\.19\.1\.0/24"):
        net(dhcp_hosts=(DhcpHost("02:00:c6:13:01:0a", IPv4Address("198.19.2.10")),))
    host = DhcpHost("02:00:c6:13:01:0a", IPv4Address("198.19.1.10"))
    with pytest.raises(InvalidInput, match="repeat a MAC"):
        net(dhcp_hosts=(host, replace(host, ipv4=IPv4Address("198.19.1.11"))))
    with pytest.raises(InvalidInput, match="VLAN"):
        net(vlan=7)
    with pytest.raises(InvalidInput, match="VNI"):
        VxlanSpec(0, IPv4Address("198.18.0.1"))
    with pytest.raises(InvalidInput, match="out of range"):
        PortForward(0, IPv4Address("198.19.1.10"), 22)
    with pytest.raises(InvalidInput, match="cannot forward"):
        PortForward(22, IPv4Address("198.19.1.10"), 22, IpProtocol.ICMP)
    with pytest.raises(InvalidInput, match="port range needs protocol"):
        SecurityRule(Direction.INGRESS, IpProtocol.ICMP, 1, 2)
    with pytest.raises(InvalidInput, match="port range"):
        SecurityRule(Direction.INGRESS, IpProtocol.TCP, 90, 80)
