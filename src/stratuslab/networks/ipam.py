"""IP address management, as pure data and functions (no database, no host).

A :class:`NetworkDefinition` is what an operator or a project defines: a name, an address class
(public, local or private, as in the original StratusLab), an IPv4 CIDR and/or an IPv6 /64, a
gateway, DNS servers and the pools addresses are handed out from. :func:`define_network` parses
the user's strings and says exactly what is wrong; :func:`check_overlap` refuses a network whose
CIDR overlaps another of the same scope.

A :class:`LeaseBook` hands out addresses of one network: the lowest free IPv4 address of the
pools, or a requested one; the IPv6 address is the EUI-64 address of the MAC (what SLAAC gives
the guest), or a requested one. Every lease is a plain :class:`Lease` record ``(instance, mac,
ip, from, to)`` kept after release, so the question "who had 198.51.100.7 last Tuesday" has an
answer. A later database layer persists the records; this module only decides.

Every method either succeeds or raises with nothing changed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from stratuslab.errors import CapacityError, Conflict, InvalidInput

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address
IPAddress = IPv4Address | IPv6Address

#: The original StratusLab MAC prefix: locally administered, unicast (``02:00`` + 4 bytes).
DEFAULT_MAC_PREFIX = "02:00"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
_PREFIX_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){0,4}$")
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class AddressClass(StrEnum):
    """Where a network's addresses are visible (original StratusLab §5.3)."""

    PUBLIC = "public"  # WAN-visible
    LOCAL = "local"  # visible inside the data centre
    PRIVATE = "private"  # a project's own network (VXLAN across hosts)


@dataclass(frozen=True, order=True)
class AddressPool:
    """An inclusive range of IPv4 addresses handed out to instances."""

    first: IPv4Address
    last: IPv4Address

    def __post_init__(self) -> None:
        if self.first > self.last:
            raise InvalidInput(
                f"address pool {self} is empty: {self.first} comes after {self.last}",
                hint="write the pool as FIRST-LAST with FIRST <= LAST",
            )

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.first <= address <= self.last

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def overlaps(self, other: AddressPool) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class NetworkDefinition:
    """A validated network. Build it with :func:`define_network` from user strings."""

    name: str
    address_class: AddressClass
    cidr4: ipaddress.IPv4Network | None = None
    gateway4: IPv4Address | None = None
    pools: tuple[AddressPool, ...] = ()
    cidr6: ipaddress.IPv6Network | None = None
    gateway6: IPv6Address | None = None
    dns: tuple[IPAddress, ...] = ()
    mtu: int | None = None
    project: str | None = None  # owner of a private network; None for site networks

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.cidr4 is None and self.cidr6 is None:
            raise InvalidInput(
                f"network {self.name} has neither an IPv4 nor an IPv6 CIDR",
                hint="give at least one, e.g. 198.51.100.0/24",
            )
        if self.cidr4 is not None:
            self._check_ipv4(self.cidr4)
        elif self.pools or self.gateway4 is not None:
            raise InvalidInput(
                f"network {self.name} has IPv4 pools or gateway but no IPv4 CIDR",
                hint="add the IPv4 CIDR",
            )
        if self.cidr6 is not None:
            self._check_ipv6(self.cidr6)
        elif self.gateway6 is not None:
            raise InvalidInput(
                f"network {self.name} has an IPv6 gateway but no IPv6 CIDR",
                hint="add the IPv6 /64",
            )
        if self.mtu is not None and not 576 <= self.mtu <= 9000:
            raise InvalidInput(
                f"network {self.name}: MTU {self.mtu} is out of range", hint="576-9000"
            )
        if (self.address_class is AddressClass.PRIVATE) != (self.project is not None):
            raise InvalidInput(
                f"network {self.name}: a private network needs a project, and only a private one",
                hint="set project for private networks; leave it unset for public and local ones",
            )

    @property
    def scope(self) -> str:
        """Networks of one scope must not overlap: the site's routed space, or one project."""
        return f"project:{self.project}" if self.project is not None else "site"

    @property
    def capacity(self) -> int:
        """How many IPv4 addresses the pools hold (gateway excluded)."""
        gateway = self.gateway4
        return sum(pool.size - (gateway in pool) for pool in self.pools)

    def _check_ipv4(self, cidr: ipaddress.IPv4Network) -> None:
        if cidr.prefixlen > 30:
            raise InvalidInput(
                f"network {self.name}: {cidr} is too small for instances",
                hint="use a /30 or larger",
            )
        hosts = _hosts(cidr)
        if self.gateway4 is not None and self.gateway4 not in hosts:
            raise InvalidInput(
                f"network {self.name}: gateway {self.gateway4} is not a host address of {cidr}",
                hint=f"pick the gateway in {hosts}",
            )
        for pool in self.pools:
            if pool.first not in hosts or pool.last not in hosts:
                raise InvalidInput(
                    f"network {self.name}: pool {pool} is not inside the host addresses of {cidr}",
                    hint="pools exclude the network and broadcast addresses",
                )
        ordered = sorted(self.pools)
        for left, right in itertools.pairwise(ordered):
            if left.overlaps(right):
                raise InvalidInput(
                    f"network {self.name}: pools {left} and {right} overlap",
                    hint="merge them or make them disjoint",
                )

    def _check_ipv6(self, cidr: ipaddress.IPv6Network) -> None:
        if cidr.prefixlen != 64:
            raise InvalidInput(
                f"network {self.name}: IPv6 CIDR {cidr} is not a /64",
                hint="SLAAC, which guests use for IPv6, needs exactly a /64",
            )
        if self.gateway6 is not None and self.gateway6 not in cidr:
            raise InvalidInput(
                f"network {self.name}: IPv6 gateway {self.gateway6} is not in {cidr}",
                hint="pick an address of the /64",
            )


@dataclass(frozen=True)
class Lease:
    """Who held which addresses when: ``until`` is None while the lease is active."""

    network: str
    instance: str
    mac: str
    ipv4: IPv4Address | None
    ipv6: IPv6Address | None
    since: datetime
    until: datetime | None = None

    @property
    def active(self) -> bool:
        return self.until is None

    def held_at(self, when: datetime) -> bool:
        return self.since <= when and (self.until is None or when < self.until)


@dataclass
class LeaseBook:
    """The leases of one network: active ones and the full history."""

    network: NetworkDefinition
    history: list[Lease] = field(default_factory=list)

    def active(self) -> list[Lease]:
        return [lease for lease in self.history if lease.active]

    def lease(
        self,
        *,
        instance: str,
        mac: str,
        now: datetime,
        ipv4: str | IPv4Address | None = None,
        ipv6: str | IPv6Address | None = None,
    ) -> Lease:
        """Lease addresses to ``instance``'s NIC ``mac``: the requested ones or the next free."""
        mac = normalize_mac(mac)
        active = self.active()
        if any(lease.mac == mac for lease in active):
            raise Conflict(
                f"MAC {mac} already holds a lease on network {self.network.name}",
                hint="release that NIC first or allocate another MAC",
            )
        new = Lease(
            network=self.network.name,
            instance=instance,
            mac=mac,
            ipv4=self._pick_ipv4(ipv4, active),
            ipv6=self._pick_ipv6(ipv6, mac, active),
            since=now,
        )
        self.history.append(new)
        return new

    def release(self, *, instance: str, now: datetime, mac: str | None = None) -> list[Lease]:
        """End ``instance``'s active leases (only the NIC ``mac`` if given); returns them ended."""
        wanted = None if mac is None else normalize_mac(mac)
        ended: list[Lease] = []
        for index, lease in enumerate(self.history):
            if lease.active and lease.instance == instance and wanted in (None, lease.mac):
                self.history[index] = replace(lease, until=max(now, lease.since))
                ended.append(self.history[index])
        return ended

    def holder(self, address: str | IPAddress, when: datetime) -> Lease | None:
        """The lease that held ``address`` at ``when`` (for forensics), or None."""
        wanted = parse_address(address, what="address")
        for lease in reversed(self.history):
            if wanted in (lease.ipv4, lease.ipv6) and lease.held_at(when):
                return lease
        return None

    def _pick_ipv4(
        self, requested: str | IPv4Address | None, active: list[Lease]
    ) -> IPv4Address | None:
        if self.network.cidr4 is None:
            if requested is not None:
                raise InvalidInput(
                    f"network {self.network.name} has no IPv4 addresses",
                    hint="do not request an IPv4 address on this network",
                )
            return None
        used = {lease.ipv4 for lease in active if lease.ipv4 is not None}
        if requested is None:
            return lowest_free(self.network, used)
        return check_requested_ipv4(self.network, requested, used)

    def _pick_ipv6(
        self, requested: str | IPv6Address | None, mac: str, active: list[Lease]
    ) -> IPv6Address | None:
        cidr = self.network.cidr6
        if cidr is None:
            if requested is not None:
                raise InvalidInput(
                    f"network {self.network.name} has no IPv6 addresses",
                    hint="do not request an IPv6 address on this network",
                )
            return None
        address = eui64(cidr, mac) if requested is None else _parse_v6(requested)
        if address not in cidr or address in (cidr.network_address, self.network.gateway6):
            raise InvalidInput(
                f"address {address} is not usable on network {self.network.name} ({cidr})",
                hint="request an address of the /64 other than the gateway",
            )
        if any(lease.ipv6 == address for lease in active):
            raise Conflict(
                f"address {address} is already leased on network {self.network.name}",
                hint="request another address or leave it out",
            )
        return address


# --------------------------------------------------------------------------------------------
# Parsing user input


def define_network(
    *,
    name: str,
    address_class: str | AddressClass,
    cidr4: str | None = None,
    gateway4: str | None = None,
    pools: Sequence[str] = (),
    cidr6: str | None = None,
    gateway6: str | None = None,
    dns: Sequence[str] = (),
    mtu: int | None = None,
    project: str | None = None,
) -> NetworkDefinition:
    """Parse and validate a network from user strings.

    ``pools`` items are ``FIRST-LAST`` or a CIDR inside ``cidr4``; with no pools, the pool is every
    host address of ``cidr4``. The gateway, when in a pool, is never handed out.
    """
    try:
        klass = AddressClass(address_class)
    except ValueError:
        choices = ", ".join(c.value for c in AddressClass)
        raise InvalidInput(
            f"unknown address class {address_class!r}", hint=f"use one of {choices}"
        ) from None
    net4 = None if cidr4 is None else parse_cidr4(cidr4)
    parsed_pools = tuple(parse_pool(text, within=net4) for text in pools)
    if net4 is not None and not parsed_pools and net4.prefixlen <= 30:
        parsed_pools = (_hosts(net4),)
    return NetworkDefinition(
        name=name,
        address_class=klass,
        cidr4=net4,
        gateway4=None if gateway4 is None else _parse_v4(gateway4, what="gateway"),
        pools=parsed_pools,
        cidr6=None if cidr6 is None else parse_cidr6(cidr6),
        gateway6=None if gateway6 is None else _parse_v6(gateway6, what="IPv6 gateway"),
        dns=tuple(parse_address(server, what="DNS server") for server in dns),
        mtu=mtu,
        project=project,
    )


def parse_cidr4(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidInput(
            f"malformed IPv4 CIDR {text!r}: {exc}",
            hint="write the network address and prefix, e.g. 198.51.100.0/24",
        ) from None


def parse_cidr6(text: str) -> ipaddress.IPv6Network:
    try:
        return ipaddress.IPv6Network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidInput(
            f"malformed IPv6 CIDR {text!r}: {exc}",
            hint="write the network address and prefix, e.g. fd00:5eed:1::/64",
        ) from None


def parse_pool(text: str, *, within: ipaddress.IPv4Network | None = None) -> AddressPool:
    """``FIRST-LAST`` or a CIDR such as ``198.51.100.128/25``.

    A CIDR pool means its addresses that are host addresses of ``within`` (so ``/24`` inside the
    same ``/24`` leaves out the network and broadcast addresses).
    """
    if "/" in text:
        net = parse_cidr4(text)
        first, last = net.network_address, net.broadcast_address
        if within is not None and net.subnet_of(within):
            hosts = _hosts(within)
            first, last = max(first, hosts.first), min(last, hosts.last)
        return AddressPool(first, last)
    start, sep, end = text.partition("-")
    if not sep:
        raise InvalidInput(
            f"malformed address pool {text!r}",
            hint="write it as FIRST-LAST (198.51.100.10-198.51.100.99) or as a CIDR",
        )
    return AddressPool(_parse_v4(start, what="pool start"), _parse_v4(end, what="pool end"))


def parse_address(text: str | IPAddress, *, what: str = "address") -> IPAddress:
    if isinstance(text, IPv4Address | IPv6Address):
        return text
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidInput(
            f"malformed {what} {text!r}", hint="write an IPv4 or IPv6 address"
        ) from None


def check_overlap(new: NetworkDefinition, existing: Iterable[NetworkDefinition]) -> None:
    """Refuse ``new`` if a network of the same scope has its name or overlapping CIDRs."""
    for other in existing:
        if other.name == new.name:
            raise Conflict(f"a network named {new.name} exists already", hint="pick another name")
        if other.scope != new.scope:
            continue
        for mine, theirs in ((new.cidr4, other.cidr4), (new.cidr6, other.cidr6)):
            if mine is not None and theirs is not None and mine.overlaps(theirs):
                raise Conflict(
                    f"network {new.name} ({mine}) overlaps network {other.name} ({theirs})",
                    hint="pick a CIDR that no other network of the same scope uses",
                )


# --------------------------------------------------------------------------------------------
# Addresses


def lowest_free(network: NetworkDefinition, used: Collection[IPv4Address]) -> IPv4Address:
    """The lowest address of the pools that is neither the gateway nor in ``used``."""
    for address in _pool_addresses(network):
        if address not in used and address != network.gateway4:
            return address
    raise CapacityError(
        f"the address pools of network {network.name} are exhausted "
        f"({network.capacity} addresses, all leased)",
        code="pool_exhausted",
        hint="release addresses, add a pool or use another network",
    )


def check_requested_ipv4(
    network: NetworkDefinition, requested: str | IPv4Address, used: Collection[IPv4Address]
) -> IPv4Address:
    address = _parse_v4(requested, what="requested address")
    if not any(address in pool for pool in network.pools) or address == network.gateway4:
        pools = ", ".join(map(str, network.pools))
        raise InvalidInput(
            f"address {address} is outside the pools of network {network.name}",
            hint=f"request an address in {pools} other than the gateway",
        )
    if address in used:
        raise Conflict(
            f"address {address} is already leased on network {network.name}",
            hint="request another address or leave it out to get the next free one",
        )
    return address


def eui64(cidr: ipaddress.IPv6Network, mac: str) -> IPv6Address:
    """The SLAAC (modified EUI-64) address of ``mac`` in the /64 ``cidr``."""
    octets = bytes.fromhex(normalize_mac(mac).replace(":", ""))
    iid = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return IPv6Address(int(cidr.network_address) | int.from_bytes(iid, "big"))


# --------------------------------------------------------------------------------------------
# MAC addresses


def normalize_mac(mac: str) -> str:
    value = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(value):
        raise InvalidInput(f"malformed MAC address {mac!r}", hint="write it like 02:00:c6:12:00:0a")
    if int(value[:2], 16) & 1:
        raise InvalidInput(
            f"MAC address {mac} is a multicast address", hint="clear bit 0 of byte 0"
        )
    return value


def check_mac_prefix(prefix: str) -> str:
    value = prefix.strip().lower()
    if not _PREFIX_RE.match(value):
        raise InvalidInput(
            f"malformed MAC prefix {prefix!r}", hint="write one to five hex pairs, e.g. 02:00"
        )
    first = int(value[:2], 16)
    if first & 0x03 != 0x02:
        raise InvalidInput(
            f"MAC prefix {prefix} is not locally administered unicast",
            hint="the first byte must have bit 1 set and bit 0 clear (02, 06, 0a, ...)",
        )
    return value


def allocate_mac(
    used: Collection[str],
    *,
    prefix: str = DEFAULT_MAC_PREFIX,
    seed: str | None = None,
    ipv4: IPv4Address | None = None,
) -> str:
    """A MAC under ``prefix`` that is not in ``used``.

    With ``ipv4`` and a two-byte prefix, the original StratusLab scheme: the last four bytes are
    the address (so the MAC says which IP it has). Otherwise with ``seed`` (e.g. instance id and
    NIC index) the MAC is derived from its hash, probing onwards on collision: deterministic for
    the same seed and ``used``. Without either, the lowest free MAC of the prefix.
    """
    prefix = check_mac_prefix(prefix)
    taken = {normalize_mac(mac) for mac in used}
    free_bytes = 6 - len(prefix.split(":"))
    if ipv4 is not None and free_bytes == 4:
        mac = _mac(prefix, int(ipv4), 4)
        if mac in taken:
            raise Conflict(f"MAC {mac} derived from {ipv4} is in use", hint="release it first")
        return mac
    space = 1 << (8 * free_bytes)
    start = 0
    if seed is not None:
        start = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") % space
    for step in range(min(space, len(taken) + 1)):
        mac = _mac(prefix, (start + step) % space, free_bytes)
        if mac not in taken:
            return mac
    raise CapacityError(  # pragma: no cover - needs every MAC of the prefix taken
        f"no free MAC address under prefix {prefix}", hint="use a shorter prefix"
    )


# --------------------------------------------------------------------------------------------
# Helpers


def _mac(prefix: str, value: int, free_bytes: int) -> str:
    tail = value.to_bytes(free_bytes, "big")
    return ":".join([prefix, *(f"{byte:02x}" for byte in tail)])


def _hosts(cidr: ipaddress.IPv4Network) -> AddressPool:
    """The host addresses of ``cidr``: all but the network and broadcast addresses."""
    return AddressPool(cidr.network_address + 1, cidr.broadcast_address - 1)


def _pool_addresses(network: NetworkDefinition) -> Iterator[IPv4Address]:
    for pool in sorted(network.pools):
        for value in range(int(pool.first), int(pool.last) + 1):
            yield IPv4Address(value)


def _parse_v4(text: str | IPv4Address, *, what: str = "address") -> IPv4Address:
    address = parse_address(text, what=what)
    if not isinstance(address, IPv4Address):
        raise InvalidInput(f"{what} {text} is not an IPv4 address", hint="write a dotted quad")
    return address


def _parse_v6(text: str | IPv6Address, *, what: str = "IPv6 address") -> IPv6Address:
    address = parse_address(text, what=what)
    if not isinstance(address, IPv6Address):
        raise InvalidInput(f"{what} {text} is not an IPv6 address", hint="write an IPv6 address")
    return address


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise InvalidInput(
            f"network name {name!r} is not valid",
            hint="use 1-63 lower-case letters, digits and inner hyphens",
        )
