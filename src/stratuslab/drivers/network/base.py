"""The node side of virtual networks: what a host networking driver does.

A :class:`HostNetworkDriver` converges one host towards declared state. The node agent calls it
with specs built from the controller's networks, leases, port forwards and security groups; the
driver knows nothing of the database. Every changing method is idempotent, and a failing call
raises :class:`~stratuslab.errors.StratusError` (``InvalidInput``, ``NotFound``, ``Conflict`` or
``DriverError``) with nothing left half done where the backend allows it.

* **Networks** (:meth:`~HostNetworkDriver.ensure_network`): a Linux bridge, optionally joined
  to an uplink (tagged with a VLAN through a VLAN sub-interface) or to a VXLAN device (private
  project networks spanning hosts: one VNI, static flood entries towards the peer hosts, no
  multicast), and a DHCP server on the bridge with static MAC-to-IP reservations only.
* **Ports** (:meth:`~HostNetworkDriver.plug`): an instance's host-side interface (the tap of a
  guest, or a veth end) enslaved to a network's bridge.
* **Port address translation** (:meth:`~HostNetworkDriver.ensure_port_forward`): a host port
  forwarded to an instance address and port.
* **Security groups** (:meth:`~HostNetworkDriver.apply_security_group`): the rules of one
  instance interface, replaced at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from stratuslab.errors import InvalidInput

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Linux interface names: at most 15 bytes; we keep to a conservative character set.
_IFNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,14}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
VXLAN_PORT = 4789


def check_ifname(name: str, *, what: str = "interface") -> str:
    if not _IFNAME_RE.match(name):
        raise InvalidInput(
            f"{what} name {name!r} is not a valid Linux interface name",
            hint="use 1-15 lower-case letters, digits, '.', '-' or '_'",
        )
    return name


def check_mac(mac: str) -> str:
    if not _MAC_RE.match(mac):
        raise InvalidInput(f"MAC {mac!r} is not six lower-case hex pairs", hint="02:00:c6:12:00:0a")
    return mac


def bridge_name(network: str) -> str:
    """A bridge name for ``network``: ``sbr-NAME`` when it fits, else a stable hash."""
    name = f"sbr-{network}"
    if _IFNAME_RE.match(name):
        return name
    return "sbr-" + hashlib.sha256(network.encode()).hexdigest()[:11]


def tap_name(instance_uuid: str, index: int) -> str:
    """The host-side tap of NIC ``index`` of an instance: predictable, so nftables can name it."""
    return f"st{instance_uuid.replace('-', '')[:9]}n{index}"


@dataclass(frozen=True)
class VxlanSpec:
    """A VXLAN segment: our VNI, the underlay address we send from and the other hosts."""

    vni: int
    local: IPv4Address
    peers: tuple[IPv4Address, ...] = ()
    #: The underlay device (its MTU bounds ours); None lets the kernel route.
    underlay: str | None = None
    port: int = VXLAN_PORT

    def __post_init__(self) -> None:
        if not 1 <= self.vni < 1 << 24:
            raise InvalidInput(f"VNI {self.vni} is out of range", hint="use 1-16777215")
        if self.local in self.peers:
            raise InvalidInput(
                f"VXLAN peer list contains our own address {self.local}",
                hint="list only the other hosts",
            )
        if self.underlay is not None:
            check_ifname(self.underlay, what="underlay")

    @property
    def device(self) -> str:
        return f"svx-{self.vni}"


@dataclass(frozen=True)
class DhcpHost:
    """A static DHCP reservation: this MAC gets this address (and hostname)."""

    mac: str
    ipv4: IPv4Address
    hostname: str | None = None

    def __post_init__(self) -> None:
        check_mac(self.mac)
        if self.hostname is not None and not _NAME_RE.match(self.hostname):
            raise InvalidInput(
                f"DHCP hostname {self.hostname!r} is not an RFC 1123 label",
                hint="use letters, digits and inner hyphens",
            )


@dataclass(frozen=True)
class HostNetworkSpec:
    """One network as one host sees it.

    ``address`` is the bridge's own address (the gateway on a single-host network, a per-host
    address on one spanning hosts); DHCP needs it. ``gateway`` and ``dns`` are what DHCP tells
    the guests. ``uplink`` joins the bridge to a physical network (through ``uplink.vlan`` when
    ``vlan`` is set); ``vxlan`` joins it to the same network on other hosts.
    """

    name: str
    bridge: str
    address: ipaddress.IPv4Interface | None = None
    address6: ipaddress.IPv6Interface | None = None
    gateway: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    mtu: int | None = None
    uplink: str | None = None
    vlan: int | None = None
    vxlan: VxlanSpec | None = None
    dhcp: bool = True
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    lease_seconds: int = 3600

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise InvalidInput(f"network name {self.name!r} is not valid", hint="a-z, 0-9, '-'")
        check_ifname(self.bridge, what="bridge")
        if self.uplink is not None:
            check_ifname(self.uplink, what="uplink")
        if self.vlan is not None and (self.uplink is None or not 1 <= self.vlan <= 4094):
            raise InvalidInput(
                f"network {self.name}: VLAN {self.vlan} needs an uplink and a tag in 1-4094",
                hint="set uplink to the trunk interface",
            )
        if self.vxlan is not None and self.uplink is not None:
            raise InvalidInput(
                f"network {self.name} has both an uplink and a VXLAN segment",
                hint="a private network spans hosts through VXLAN only",
            )
        if self.dhcp and self.dhcp_hosts and self.address is None:
            raise InvalidInput(
                f"network {self.name} serves DHCP but the bridge has no address",
                hint="give the bridge an address in the network, or set dhcp=False",
            )
        self._check_reservations()
        if self.mtu is not None and not 576 <= self.mtu <= 9000:
            raise InvalidInput(f"network {self.name}: MTU {self.mtu} out of range", hint="576-9000")
        if self.lease_seconds < 120:
            raise InvalidInput("DHCP lease time under 2 minutes", hint="use 120 s or more")

    def _check_reservations(self) -> None:
        macs = [host.mac for host in self.dhcp_hosts]
        addresses = [host.ipv4 for host in self.dhcp_hosts]
        if len(set(macs)) != len(macs) or len(set(addresses)) != len(addresses):
            raise InvalidInput(
                f"network {self.name}: DHCP reservations repeat a MAC or an address",
                hint="one reservation per NIC, one NIC per address",
            )
        if self.address is None:
            return
        outside = [str(a) for a in addresses if a not in self.address.network]
        if outside or self.address.ip in addresses:
            raise InvalidInput(
                f"network {self.name}: reservations {', '.join(outside) or self.address.ip} "
                f"are outside {self.address.network} or take the bridge's address",
                hint="reserve host addresses of the network other than the bridge's",
            )

    @property
    def vlan_device(self) -> str | None:
        """The VLAN sub-interface of the uplink, when the network is tagged."""
        if self.uplink is None or self.vlan is None:
            return None
        name = f"{self.uplink}.{self.vlan}"
        if _IFNAME_RE.match(name):
            return name
        return f"svl-{hashlib.sha256(self.uplink.encode()).hexdigest()[:5]}.{self.vlan}"


class IpProtocol(StrEnum):
    """Transport protocols of port forwards and security rules."""

    ANY = "any"
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"  # ICMP for IPv4, ICMPv6 for IPv6


class Direction(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


@dataclass(frozen=True)
class PortForward:
    """PAT: ``host_port`` on the host (on ``host_address``, or any local address) to
    ``target:target_port``."""

    host_port: int
    target: IPv4Address
    target_port: int
    protocol: IpProtocol = IpProtocol.TCP
    host_address: IPv4Address | None = None

    def __post_init__(self) -> None:
        for port in (self.host_port, self.target_port):
            if not 1 <= port <= 65535:
                raise InvalidInput(f"port {port} is out of range", hint="use 1-65535")
        if self.protocol not in (IpProtocol.TCP, IpProtocol.UDP):
            raise InvalidInput(
                f"cannot forward protocol {self.protocol}", hint="forward tcp or udp"
            )

    @property
    def key(self) -> tuple[str, str, int]:
        """What identifies a forward on the host: protocol, listening address and port."""
        return (self.protocol.value, str(self.host_address or "*"), self.host_port)


@dataclass(frozen=True)
class SecurityRule:
    """Allow traffic: direction, protocol, port range (tcp/udp) and remote CIDR (None: any).

    A rule naming a remote security group is expanded to CIDRs by the caller.
    """

    direction: Direction
    protocol: IpProtocol = IpProtocol.ANY
    port_min: int | None = None
    port_max: int | None = None
    remote: IPNetwork | None = None

    def __post_init__(self) -> None:
        ports = (self.port_min, self.port_max)
        if ports == (None, None):
            return
        if self.protocol not in (IpProtocol.TCP, IpProtocol.UDP):
            raise InvalidInput(
                f"a port range needs protocol tcp or udp, not {self.protocol}",
                hint="drop the ports or set the protocol",
            )
        low, high = self.port_min, self.port_max if self.port_max is not None else self.port_min
        if low is None or high is None or not 1 <= low <= high <= 65535:
            raise InvalidInput(
                f"port range {self.port_min}-{self.port_max} is not valid",
                hint="give 1 <= port_min <= port_max <= 65535",
            )

    @property
    def ports(self) -> tuple[int, int] | None:
        if self.port_min is None:
            return None
        return (self.port_min, self.port_max if self.port_max is not None else self.port_min)


#: The default group: all egress; SSH and ICMP (v4 and v6) ingress.
DEFAULT_SECURITY_GROUP: tuple[SecurityRule, ...] = (
    SecurityRule(Direction.EGRESS),
    SecurityRule(Direction.INGRESS, IpProtocol.TCP, 22, 22),
    SecurityRule(Direction.INGRESS, IpProtocol.ICMP),
)


@dataclass(frozen=True)
class SecuredPort:
    """An instance's host-side interface and the addresses and MAC its guest may use."""

    ifname: str
    mac: str
    ipv4: tuple[IPv4Address, ...] = ()
    ipv6: tuple[IPv6Address, ...] = ()

    def __post_init__(self) -> None:
        check_ifname(self.ifname)
        check_mac(self.mac)


@dataclass(frozen=True)
class NetworkStatus:
    """What the host shows of a network: the bridge, its ports, the DHCP server."""

    name: str
    bridge: str
    up: bool
    ports: tuple[str, ...]
    dhcp_running: bool


@runtime_checkable
class HostNetworkDriver(Protocol):
    """The node-side surface every host networking driver offers."""

    name: str

    def ensure_network(self, spec: HostNetworkSpec) -> None:
        """Create or converge the network: bridge, uplink/VLAN/VXLAN, DHCP and reservations.

        A changed reservation list reaches the running DHCP server without a restart. Changing
        the bridge name of an existing network is a ``Conflict``: remove it first.
        """
        ...

    def remove_network(self, name: str) -> None:
        """Stop DHCP and delete the devices; no-op if unknown; ``Conflict`` while ports are
        plugged."""
        ...

    def networks(self) -> list[str]:
        """Names of the networks this driver manages on the host."""
        ...

    def status(self, name: str) -> NetworkStatus:
        """The network as the host shows it; ``NotFound`` if unknown."""
        ...

    def plug(self, network: str, ifname: str, *, create_tap: bool = False) -> None:
        """Enslave ``ifname`` to the network's bridge and bring it up (creating a persistent tap
        first if asked). ``NotFound`` for an unknown network or a missing interface."""
        ...

    def unplug(self, ifname: str) -> None:
        """Take ``ifname`` off its bridge (deleting it if :meth:`plug` created it); no-op if
        not plugged."""
        ...

    def ensure_port_forward(self, forward: PortForward) -> None:
        """Forward a host port; ``Conflict`` if that port forwards elsewhere already."""
        ...

    def remove_port_forward(self, forward: PortForward) -> None:
        """Stop forwarding the host port of ``forward``; no-op if not forwarded."""
        ...

    def port_forwards(self) -> list[PortForward]:
        """Every forward in place, sorted by protocol, host address and port."""
        ...

    def apply_security_group(self, port: SecuredPort, rules: tuple[SecurityRule, ...]) -> None:
        """Replace the rules of ``port`` (all in one atomic change of the host's rules)."""
        ...

    def remove_security_group(self, ifname: str) -> None:
        """Drop the rules of ``ifname``; no-op if it has none."""
        ...

    def security_group(self, ifname: str) -> tuple[SecurityRule, ...] | None:
        """The rules applied to ``ifname``, or None."""
        ...
