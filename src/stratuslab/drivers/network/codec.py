"""JSON forms of the driver's specs, for the state a host driver keeps between restarts."""

from __future__ import annotations

import ipaddress
from typing import Any

from stratuslab.drivers.network.base import (
    DhcpHost,
    Direction,
    HostNetworkSpec,
    IpProtocol,
    PortForward,
    SecuredPort,
    SecurityRule,
    VxlanSpec,
)

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def network_to_json(spec: HostNetworkSpec) -> dict[str, Any]:
    vxlan = spec.vxlan
    return {
        "name": spec.name,
        "bridge": spec.bridge,
        "address": _opt(spec.address),
        "address6": _opt(spec.address6),
        "gateway": _opt(spec.gateway),
        "dns": [str(server) for server in spec.dns],
        "mtu": spec.mtu,
        "uplink": spec.uplink,
        "vlan": spec.vlan,
        "vxlan": None
        if vxlan is None
        else {
            "vni": vxlan.vni,
            "local": str(vxlan.local),
            "peers": [str(peer) for peer in vxlan.peers],
            "underlay": vxlan.underlay,
            "port": vxlan.port,
        },
        "dhcp": spec.dhcp,
        "dhcp_hosts": [[h.mac, str(h.ipv4), h.hostname] for h in spec.dhcp_hosts],
        "lease_seconds": spec.lease_seconds,
    }


def network_from_json(data: dict[str, Any]) -> HostNetworkSpec:
    vx = data.get("vxlan")
    return HostNetworkSpec(
        name=data["name"],
        bridge=data["bridge"],
        address=None if data["address"] is None else ipaddress.IPv4Interface(data["address"]),
        address6=None if data["address6"] is None else ipaddress.IPv6Interface(data["address6"]),
        gateway=None if data["gateway"] is None else IPv4(data["gateway"]),
        dns=tuple(IPv4(server) for server in data["dns"]),
        mtu=data["mtu"],
        uplink=data["uplink"],
        vlan=data["vlan"],
        vxlan=None
        if vx is None
        else VxlanSpec(
            vni=vx["vni"],
            local=IPv4(vx["local"]),
            peers=tuple(IPv4(peer) for peer in vx["peers"]),
            underlay=vx["underlay"],
            port=vx["port"],
        ),
        dhcp=data["dhcp"],
        dhcp_hosts=tuple(DhcpHost(mac, IPv4(ip), name) for mac, ip, name in data["dhcp_hosts"]),
        lease_seconds=data["lease_seconds"],
    )


def forward_to_json(forward: PortForward) -> dict[str, Any]:
    return {
        "host_port": forward.host_port,
        "target": str(forward.target),
        "target_port": forward.target_port,
        "protocol": forward.protocol.value,
        "host_address": _opt(forward.host_address),
    }


def forward_from_json(data: dict[str, Any]) -> PortForward:
    return PortForward(
        host_port=data["host_port"],
        target=IPv4(data["target"]),
        target_port=data["target_port"],
        protocol=IpProtocol(data["protocol"]),
        host_address=None if data["host_address"] is None else IPv4(data["host_address"]),
    )


def port_to_json(port: SecuredPort, rules: tuple[SecurityRule, ...]) -> dict[str, Any]:
    return {
        "ifname": port.ifname,
        "mac": port.mac,
        "ipv4": [str(a) for a in port.ipv4],
        "ipv6": [str(a) for a in port.ipv6],
        "rules": [
            [r.direction.value, r.protocol.value, r.port_min, r.port_max, _opt(r.remote)]
            for r in rules
        ],
    }


def port_from_json(data: dict[str, Any]) -> tuple[SecuredPort, tuple[SecurityRule, ...]]:
    port = SecuredPort(
        ifname=data["ifname"],
        mac=data["mac"],
        ipv4=tuple(IPv4(a) for a in data["ipv4"]),
        ipv6=tuple(IPv6(a) for a in data["ipv6"]),
    )
    rules = tuple(
        SecurityRule(
            Direction(direction),
            IpProtocol(protocol),
            low,
            high,
            None if remote is None else ipaddress.ip_network(remote),
        )
        for direction, protocol, low, high, remote in data["rules"]
    )
    return port, rules
