"""cloud-init network-config version 2 for an instance's NICs, from its leases.

The addresses written here are the ones the DHCP server reserves for the same MACs, so a guest
that configures its interfaces statically from the seed and one that asks DHCP end up the same.
Only the primary NIC gets default routes; every NIC gets its network's DNS servers and MTU.
Pass the result as ``network_config`` to :func:`stratuslab.context.nocloud.build_nocloud`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stratuslab.errors import InvalidInput
from stratuslab.networks.ipam import Lease, NetworkDefinition, normalize_mac


@dataclass(frozen=True)
class GuestNic:
    """One NIC of the instance: its network and the lease it holds there."""

    network: NetworkDefinition
    lease: Lease

    def __post_init__(self) -> None:
        if self.lease.network != self.network.name:
            raise InvalidInput(
                f"lease of {self.lease.mac} belongs to network {self.lease.network}, "
                f"not {self.network.name}",
                hint="pair each NIC with the network it was leased on",
            )


def network_config(nics: Sequence[GuestNic], *, primary: int = 0) -> dict[str, Any]:
    """The ``network-config`` document (v2): interfaces matched by MAC, named eth0, eth1, ..."""
    if nics and not 0 <= primary < len(nics):
        raise InvalidInput(
            f"primary NIC index {primary} is out of range for {len(nics)} NIC(s)",
            hint="count NICs from 0",
        )
    macs = [normalize_mac(nic.lease.mac) for nic in nics]
    if len(set(macs)) != len(macs):
        raise InvalidInput("two NICs have the same MAC address", hint="give each NIC its own MAC")
    ethernets = {
        f"eth{index}": _ethernet(nic, name=f"eth{index}", primary=index == primary)
        for index, nic in enumerate(nics)
    }
    return {"version": 2, "ethernets": ethernets}


def _ethernet(nic: GuestNic, *, name: str, primary: bool) -> dict[str, Any]:
    net, lease = nic.network, nic.lease
    entry: dict[str, Any] = {
        "match": {"macaddress": normalize_mac(lease.mac)},
        "set-name": name,
    }
    addresses: list[str] = []
    routes: list[dict[str, str]] = []
    if lease.ipv4 is not None and net.cidr4 is not None:
        addresses.append(str(ipaddress.IPv4Interface((lease.ipv4, net.cidr4.prefixlen))))
        if primary and net.gateway4 is not None:
            routes.append({"to": "0.0.0.0/0", "via": str(net.gateway4)})
    if lease.ipv6 is not None and net.cidr6 is not None:
        addresses.append(str(ipaddress.IPv6Interface((lease.ipv6, net.cidr6.prefixlen))))
        if primary and net.gateway6 is not None:
            routes.append({"to": "::/0", "via": str(net.gateway6)})
    entry["dhcp4"] = False
    entry["dhcp6"] = False
    entry["addresses"] = addresses
    if routes:
        entry["routes"] = routes
    if net.dns:
        entry["nameservers"] = {"addresses": [str(server) for server in net.dns]}
    if net.mtu is not None:
        entry["mtu"] = net.mtu
    return entry
