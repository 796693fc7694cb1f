"""nftables rulesets for port forwards and security groups, rendered as pure text.

Each function returns a whole ``nft -f`` script that replaces one driver-owned table in a single
transaction: ``add table`` (so the delete cannot fail), ``delete table``, then the full table.
The kernel applies all of it or none of it, so running instances never see a half-applied
change. Tables we own, nothing else is touched:

``table ip stratus_pat``
    ``prerouting`` and ``output`` NAT chains with one DNAT rule per forward: traffic for a host
    port (on one host address, or any local address) goes to the instance's address and port.

``table bridge stratus_sg``
    ``prerouting`` dispatches each instance port (by bridge port name) to ``port_<if>``, which
    drops frames whose source MAC, ARP sender address or IP source address is not the
    instance's own: security groups below match on addresses, so they must not be spoofable.

``table inet stratus_sg``
    ``forward`` (bridged traffic passes it through br_netfilter, routed traffic natively): return
    traffic of allowed connections and IPv6 neighbour discovery pass; then the source address
    dispatches to ``egress_<if>`` (allowed: ``return``, else drop), and the destination address to
    ``ingress_<if>`` (allowed: ``accept``, else drop). Traffic between the host itself and an
    instance (DHCP, DNS, the gateway) does not cross ``forward`` and is not filtered.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from stratuslab.drivers.network.base import (
    Direction,
    IpProtocol,
    PortForward,
    SecuredPort,
    SecurityRule,
)
from stratuslab.errors import Conflict, InvalidInput

PAT_TABLE = "stratus_pat"
SG_TABLE = "stratus_sg"
_ND_TYPES = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"

#: A security group as applied: the port and its rules.
Binding = tuple[SecuredPort, tuple[SecurityRule, ...]]


def port_forward_script(forwards: Iterable[PortForward]) -> str:
    """The script that makes ``table ip stratus_pat`` hold exactly ``forwards``."""
    rules = [_dnat(forward) for forward in sorted(forwards, key=lambda f: f.key)]
    lines = _replace_table("ip", PAT_TABLE)
    if rules:
        lines += [
            f"table ip {PAT_TABLE} {{",
            "\tchain prerouting {",
            "\t\ttype nat hook prerouting priority dstnat; policy accept;",
            *(f"\t\t{rule}" for rule in rules),
            "\t}",
            "\tchain output {",
            "\t\ttype nat hook output priority -100; policy accept;",
            *(f"\t\tip daddr != 127.0.0.0/8 {rule}" for rule in rules),
            "\t}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def security_group_script(bindings: Mapping[str, Binding]) -> str:
    """The script that makes both ``stratus_sg`` tables hold exactly ``bindings`` (by ifname)."""
    ports = [bindings[name] for name in sorted(bindings)]
    _check_unique(ports)
    lines = _replace_table("bridge", SG_TABLE)
    lines += _replace_table("inet", SG_TABLE)
    if ports:
        lines += _bridge_table([port for port, _ in ports])
        lines += _inet_table(ports)
    return "\n".join(lines) + "\n"


def chain_suffix(ifname: str) -> str:
    """The part of chain names that stands for ``ifname`` (nft chain names are identifiers)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", ifname)


# --------------------------------------------------------------------------------------------


def _replace_table(family: str, name: str) -> list[str]:
    """Create-if-missing then delete: the new table (if any) follows in the same transaction."""
    return [f"add table {family} {name}", f"delete table {family} {name}"]


def _dnat(forward: PortForward) -> str:
    match = "fib daddr type local"
    if forward.host_address is not None:
        match = f"ip daddr {forward.host_address}"
    proto = forward.protocol.value
    return (
        f"{match} {proto} dport {forward.host_port} dnat to {forward.target}:{forward.target_port}"
    )


def _bridge_table(ports: list[SecuredPort]) -> list[str]:
    dispatch = ", ".join(f'"{p.ifname}" : jump port_{chain_suffix(p.ifname)}' for p in ports)
    lines = [
        f"table bridge {SG_TABLE} {{",
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority -200; policy accept;",
        f"\t\tiifname vmap {{ {dispatch} }}",
        "\t}",
    ]
    for port in ports:
        ipv4 = _set(["0.0.0.0", *map(str, port.ipv4)])
        ipv6 = _set(["::", "fe80::/10", *map(str, port.ipv6)])
        lines += [
            f"\tchain port_{chain_suffix(port.ifname)} {{",
            f"\t\tether saddr != {port.mac} drop",
            f"\t\tether type arp arp saddr ether != {port.mac} drop",
            f"\t\tether type arp arp saddr ip != {ipv4} drop",
            f"\t\tether type ip ip saddr != {ipv4} drop",
            f"\t\tether type ip6 ip6 saddr != {ipv6} drop",
            "\t}",
        ]
    return [*lines, "}"]


def _inet_table(ports: list[Binding]) -> list[str]:
    lines = [
        f"table inet {SG_TABLE} {{",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        "\t\tct state established,related accept",
        f"\t\ticmpv6 type {{ {_ND_TYPES} }} accept",
    ]
    for selector, prefix in (("saddr", "egress"), ("daddr", "ingress")):
        for family, addresses in (("ip", _v4), ("ip6", _v6)):
            pairs = [
                f"{address} : jump {prefix}_{chain_suffix(port.ifname)}"
                for port, _ in ports
                for address in addresses(port)
            ]
            if pairs:
                lines.append(f"\t\t{family} {selector} vmap {{ {', '.join(pairs)} }}")
    lines.append("\t}")
    for port, rules in ports:
        for direction, verdict in ((Direction.EGRESS, "return"), (Direction.INGRESS, "accept")):
            lines.append(f"\tchain {direction.value}_{chain_suffix(port.ifname)} {{")
            lines += [
                f"\t\t{_rule(rule)}{verdict}" for rule in rules if rule.direction is direction
            ]
            lines += ["\t\tdrop", "\t}"]
    return [*lines, "}"]


def _rule(rule: SecurityRule) -> str:
    """The match part of one rule (with a trailing space when not empty)."""
    parts: list[str] = []
    if rule.remote is not None:
        family = "ip" if isinstance(rule.remote, ipaddress.IPv4Network) else "ip6"
        selector = "saddr" if rule.direction is Direction.INGRESS else "daddr"
        parts.append(f"{family} {selector} {rule.remote}")
    if rule.protocol is IpProtocol.ICMP:
        if rule.remote is None:
            parts.append("meta l4proto { icmp, icmpv6 }")
        else:
            v4 = isinstance(rule.remote, ipaddress.IPv4Network)
            parts.append("meta l4proto " + ("icmp" if v4 else "icmpv6"))
    elif rule.protocol is not IpProtocol.ANY:
        ports = rule.ports
        if ports is None:
            parts.append(f"meta l4proto {rule.protocol.value}")
        else:
            span = str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"
            parts.append(f"{rule.protocol.value} dport {span}")
    return "".join(f"{part} " for part in parts)


def _v4(port: SecuredPort) -> list[str]:
    return [str(address) for address in port.ipv4]


def _v6(port: SecuredPort) -> list[str]:
    return [str(address) for address in port.ipv6]


def _set(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _check_unique(ports: list[Binding]) -> None:
    owners: dict[str, str] = {}
    for port, _ in ports:
        suffix = chain_suffix(port.ifname)
        if suffix in owners:
            raise InvalidInput(
                f"interfaces {owners[suffix]} and {port.ifname} map to the same chain names",
                hint="name interfaces so they differ in more than '.' versus '-' versus '_'",
            )
        owners[suffix] = port.ifname
    seen: dict[str, str] = {}
    for port, _ in ports:
        for address in (*_v4(port), *_v6(port)):
            if address in seen:
                raise Conflict(
                    f"address {address} is claimed by both {seen[address]} and {port.ifname}",
                    hint="an address belongs to one instance interface",
                )
            seen[address] = port.ifname
