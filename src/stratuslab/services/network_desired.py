"""The network part of a host's desired state: NICs, forwards and rules per instance, and the
networks (with their DHCP reservations) the host carries."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Instance, InstanceNic, Network, PortForward
from stratuslab.networks import underlay
from stratuslab.schemas.agent import (
    DesiredForward,
    DesiredInstance,
    DesiredNetwork,
    DesiredNic,
    DesiredReservation,
    DesiredRule,
    DesiredState,
)
from stratuslab.services import network_ports, networks, nics, secgroups
from stratuslab.types import DesiredState as Desired
from stratuslab.types import InstanceStatus


def fill(
    session: Session, state: DesiredState, known: Mapping[str, Instance] | None = None
) -> DesiredState:
    """Add NICs, port forwards and networks to ``state`` (in place; returned for chaining).
    ``known``: the instances' rows already read, by id (the others are read)."""
    live = [inst for inst in state.instances if inst.desired != Desired.DELETED.value]
    by_instance = networks.nics_of(session, [inst.id for inst in live])
    user_mode = [inst for inst in live if inst.id not in by_instance]
    _user_mode(session, state.host_id, user_mode, known or {})
    if not by_instance:
        return state
    all_nics = [nic for group in by_instance.values() for nic in group]
    rows = session.scalars(
        select(Network).where(Network.id.in_({nic.network_id for nic in all_nics}))
    )
    nets = {row.id: row for row in rows}
    rules = secgroups.host_rules(session, {str(n.security_group_id) for n in all_nics})
    forwards = nics.forwards_of(session, list(by_instance))
    for inst in live:
        mine = by_instance.get(inst.id, [])
        if not mine:
            continue  # user mode: see _user_mode
        inst.nics = [_nic(nic, nets[nic.network_id], rules) for nic in mine]
        inst.port_forwards = _forwards(forwards.get(inst.id, []), mine)
    state.networks = _networks(live, by_instance, nets, _peers(session, state.host_id, nets))
    return state


def _user_mode(
    session: Session, host_id: str, instances: list[DesiredInstance], known: Mapping[str, Instance]
) -> None:
    """QEMU forwards of user-mode instances (the image's declared ports besides SSH)."""
    missing = [i.id for i in instances if i.id not in known]
    specs = dict(known)
    if missing:
        specs.update(
            (row.id, row)
            for row in session.scalars(select(Instance).where(Instance.id.in_(missing)))
        )
    for inst in instances:
        row = specs.get(inst.id)
        if row is None or row.host_id != host_id:
            continue
        inst.port_forwards = [
            DesiredForward(
                protocol=str(e["protocol"]),
                host_port=int(e["host_port"]),
                target=network_ports.USER_MODE_GUEST,
                target_port=int(e["target_port"]),
                user_mode=True,
            )
            for e in network_ports.user_forwards(row)
        ]


def _peers(session: Session, host_id: str, nets: dict[str, Network]) -> dict[str, list[str]]:
    """Per VXLAN network: the underlay addresses of the other hosts with a live instance NIC
    on it (hosts that announced no underlay address cannot be peers)."""
    vxlan = [net_id for net_id, net in nets.items() if net.driver == "vxlan"]
    if not vxlan:
        return {}
    pairs = session.execute(
        select(InstanceNic.network_id, Instance.host_id)
        .join(Instance, Instance.id == InstanceNic.instance_id)
        .where(
            InstanceNic.network_id.in_(vxlan),
            Instance.host_id.is_not(None),
            Instance.host_id != host_id,
            Instance.desired != Desired.DELETED.value,
            Instance.status.not_in([InstanceStatus.DELETED.value, InstanceStatus.PENDING.value]),
        )
        .distinct()
    ).all()
    host_ids = {str(h) for _, h in pairs}
    hosts = session.scalars(select(Host).where(Host.id.in_(host_ids))).all() if host_ids else []
    addresses = {h.id: underlay.decode(h.usage) for h in hosts}
    out: dict[str, set[str]] = {}
    for network_id, other in pairs:
        address = addresses.get(str(other))
        if address is not None:
            out.setdefault(network_id, set()).add(address)
    return {network_id: sorted(found) for network_id, found in out.items()}


def _nic(nic: InstanceNic, net: Network, rules: dict[str, list[secgroups.Allow]]) -> DesiredNic:
    prefix = net.cidr4.split("/")[1] if net.cidr4 else None
    allows = rules.get(str(nic.security_group_id), [])
    return DesiredNic(
        index=nic.index,
        network=net.name,
        mac=nic.mac,
        ipv4=nic.ipv4,
        ipv6=nic.ipv6,
        address=f"{nic.ipv4}/{prefix}" if nic.ipv4 and prefix else None,
        gateway=net.gateway4 if nic.index == 0 else None,
        dns=[server for server in net.dns if ":" not in server],
        mtu=net.mtu,
        rules=[
            DesiredRule(
                direction=a.direction,
                protocol=a.protocol,
                port_min=a.port_min,
                port_max=a.port_max,
                remote=a.remote,
            )
            for a in allows
        ],
    )


def _forwards(rows: list[PortForward], mine: list[InstanceNic]) -> list[DesiredForward]:
    targets = {nic.id: nic.ipv4 for nic in mine}
    return [
        DesiredForward(
            protocol=f.protocol,
            host_port=f.host_port,
            target=str(targets[f.nic_id]),
            target_port=f.target_port,
        )
        for f in rows
        if targets.get(f.nic_id)
    ]


def _networks(
    live: list[DesiredInstance],
    by_instance: dict[str, list[InstanceNic]],
    nets: dict[str, Network],
    peers: dict[str, list[str]],
) -> list[DesiredNetwork]:
    reservations: dict[str, list[DesiredReservation]] = {net_id: [] for net_id in nets}
    for inst in live:
        for nic in by_instance.get(inst.id, []):
            if nic.ipv4 is not None:
                hostname = inst.hostname if nic.index == 0 else None
                reservations[nic.network_id].append(
                    DesiredReservation(mac=nic.mac, ipv4=nic.ipv4, hostname=hostname)
                )
    return [
        DesiredNetwork(
            name=net.name,
            driver=net.driver,
            address_class=net.address_class,
            cidr4=net.cidr4,
            gateway4=net.gateway4,
            cidr6=net.cidr6,
            gateway6=net.gateway6,
            dns=list(net.dns),
            mtu=net.mtu,
            uplink=net.uplink,
            vlan=net.vlan,
            vni=net.vni,
            reservations=reservations[net.id],
            peers=peers.get(net.id, []),
        )
        for net in sorted(nets.values(), key=lambda n: n.name)
    ]
