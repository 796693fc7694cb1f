"""Instance NICs after creation (hot attach and detach) and port forwards (PAT).

Both change what the instance's host must do, so both bump the instance's generation and the
host's desired state: the agent attaches or detaches the NIC (live when the guest runs) and
re-applies forwards and rules, then reports the generation it reached, which finishes the
operation the client waits on.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import (
    Host,
    Instance,
    InstanceNic,
    Network,
    Operation,
    PortForward,
    SecurityGroup,
    utcnow,
)
from stratuslab.drivers.network.base import tap_name
from stratuslab.errors import Conflict, InvalidInput, NotFound
from stratuslab.identity.authz import Action
from stratuslab.schemas import instances as wire_instances
from stratuslab.schemas import networks as wire
from stratuslab.services import events, network_ports, networks, operations, secgroups
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork
from stratuslab.services.instances import get_instance, host_key
from stratuslab.types import DesiredState, InstanceStatus

#: the guest ports forwarded by default when none is named
DEFAULT_FORWARD_PORT = 22


# -- NICs --------------------------------------------------------------------------------


def attach_nic(
    uow: UnitOfWork, principal: Principal, ref: str, req: wire.NicCreate
) -> tuple[Operation, InstanceNic]:
    s = uow.session
    inst = _changeable(s, principal, ref)
    request = networks.NicRequest(req.network, req.ip, req.ipv6, req.security_group)
    prefix = uow.ctx.settings.mac_prefix
    (nic,) = networks.allocate_nics(s, principal, inst, [request], mac_prefix=prefix)
    network = s.get(Network, nic.network_id)
    name = network.name if network else nic.network_id
    message = f"NIC {nic.index} attached to network {name}: {nic.mac} {nic.ipv4 or ''}"
    op = _changed(uow, principal, inst, "instance.nic_attach", message.strip())
    secgroups.touch_hosts(uow, [str(nic.security_group_id)])
    network_ports.touch_vxlan_hosts(uow, [nic.network_id])
    return op, nic


def detach_nic(uow: UnitOfWork, principal: Principal, ref: str, nic_ref: str) -> Operation:
    s = uow.session
    inst = _changeable(s, principal, ref)
    nic = networks.find_nic(s, inst, nic_ref)
    group, network_id = str(nic.security_group_id), nic.network_id
    network_ports.touch_vxlan_hosts(uow, [network_id])  # while the NIC still counts
    networks.release_nic(s, nic)
    s.flush()
    op = _changed(
        uow, principal, inst, "instance.nic_detach", f"NIC {nic.index} ({nic.mac}) detached"
    )
    secgroups.touch_hosts(uow, [group])
    return op


def nic_wire(session: Session, nics: Sequence[InstanceNic]) -> list[wire.Nic]:
    if not nics:
        return []
    ids = {nic.network_id for nic in nics}
    group_ids = {nic.security_group_id for nic in nics if nic.security_group_id}
    nets = {n.id: n for n in session.scalars(select(Network).where(Network.id.in_(ids)))}
    groups = {gid: secgroups_name(session, gid) for gid in group_ids}
    out = []
    for nic in nics:
        net = nets.get(nic.network_id)
        prefix = net.cidr4.split("/")[1] if net is not None and net.cidr4 else None
        out.append(
            wire.Nic(
                id=nic.id,
                index=nic.index,
                network=net.name if net is not None else nic.network_id,
                network_id=nic.network_id,
                mac=nic.mac,
                ipv4=nic.ipv4,
                ipv6=nic.ipv6,
                address=f"{nic.ipv4}/{prefix}" if nic.ipv4 and prefix else None,
                security_group=groups.get(nic.security_group_id or ""),
                tap=tap_name(nic.instance_id, nic.index),
            )
        )
    return out


def secgroups_name(session: Session, group_id: str) -> str | None:
    group = session.get(SecurityGroup, group_id)
    return None if group is None else group.name


# -- port forwards -----------------------------------------------------------------------


def add_forward(
    uow: UnitOfWork, principal: Principal, ref: str, req: wire.PortForwardCreate
) -> PortForward:
    s = uow.session
    settings = uow.ctx.settings
    inst = _changeable(s, principal, ref)
    if inst.host_id is None:
        raise Conflict(
            f"instance {inst.name} is not on a host yet ({inst.status})",
            hint="forward ports once it is scheduled",
            code="not_placed",
        )
    nic = networks.find_nic(s, inst, str(req.nic))
    if nic.ipv4 is None:
        raise InvalidInput(
            f"NIC {nic.index} of instance {inst.name} has no IPv4 address to forward to",
            hint="forward to a NIC on a network with an IPv4 CIDR",
        )
    used = network_ports.used_host_ports(s, inst.host_id, req.protocol)
    host_port = req.host_port or _free_port(used, settings.pat_port_base, settings.pat_port_count)
    if host_port in used:
        raise Conflict(
            f"host port {req.protocol}/{host_port} of the instance's host is forwarded already",
            hint="leave --host-port out to get the next free one",
            code="port_in_use",
        )
    forward = PortForward(
        instance_id=inst.id,
        nic_id=nic.id,
        host_id=inst.host_id,
        protocol=req.protocol,
        host_port=host_port,
        target_port=req.port,
    )
    s.add(forward)
    s.flush()
    text = f"host port {req.protocol}/{host_port} forwarded to {nic.ipv4}:{req.port}"
    _changed(uow, principal, inst, "instance.port_forward", text)
    return forward


def remove_forward(uow: UnitOfWork, principal: Principal, ref: str, forward_ref: str) -> None:
    s = uow.session
    inst = _changeable(s, principal, ref)
    for forward in forwards_of(s, [inst.id]).get(inst.id, []):
        if forward_ref in (forward.id, str(forward.host_port)):
            s.delete(forward)
            s.flush()
            text = f"host port {forward.protocol}/{forward.host_port} no longer forwarded"
            _changed(uow, principal, inst, "instance.port_forward", text)
            return
    raise NotFound(
        f"instance {inst.name} has no port forward {forward_ref!r}",
        hint=f"see `stratus port-forward list {inst.name}`",
        code="port_forward_not_found",
    )


def forwards_of(session: Session, instance_ids: Sequence[str]) -> dict[str, list[PortForward]]:
    out: dict[str, list[PortForward]] = {}
    if not instance_ids:
        return out
    stmt = (
        select(PortForward)
        .where(PortForward.instance_id.in_(list(instance_ids)))
        .order_by(PortForward.protocol, PortForward.host_port)
    )
    for forward in session.scalars(stmt):
        out.setdefault(forward.instance_id, []).append(forward)
    return out


def forward_wire(session: Session, forwards: Sequence[PortForward]) -> list[wire.PortForward]:
    if not forwards:
        return []
    nic_ids = {f.nic_id for f in forwards}
    host_ids = {f.host_id for f in forwards}
    targets = {
        nic.id: nic.ipv4 or ""
        for nic in session.scalars(select(InstanceNic).where(InstanceNic.id.in_(nic_ids)))
    }
    hosts = {h.id: h.name for h in session.scalars(select(Host).where(Host.id.in_(host_ids)))}
    return [
        wire.PortForward(
            id=f.id,
            instance_id=f.instance_id,
            protocol=f.protocol,
            host_port=f.host_port,
            target=targets.get(f.nic_id, ""),
            target_port=f.target_port,
            host_id=f.host_id,
            host_name=hosts.get(f.host_id),
        )
        for f in forwards
    ]


# -- helpers -----------------------------------------------------------------------------


def _changeable(session: Session, principal: Principal, ref: str) -> Instance:
    inst = get_instance(session, principal, ref, action=Action.UPDATE)
    if inst.desired == DesiredState.DELETED.value:
        raise Conflict(f"instance {inst.name} is being deleted", hint="nothing more to do")
    return inst


def _changed(
    uow: UnitOfWork, principal: Principal, inst: Instance, kind: str, message: str
) -> Operation:
    """Bump the instance and its host; an operation that ends when the agent applied it."""
    s = uow.session
    inst.generation += 1
    inst.updated_at = utcnow()
    events.record(s, kind, message, instance_id=inst.id, project_id=inst.project_id)
    if inst.host_id is not None:
        host = s.get(Host, inst.host_id)
        if host is not None:
            host.bump()
        uow.notify(host_key(inst.host_id))
    expect = (
        InstanceStatus.STOPPED
        if inst.desired == DesiredState.STOPPED.value
        else InstanceStatus.RUNNING
    )
    return operations.start(s, principal, kind=kind, instances=[inst], expect_status=expect)


def _free_port(used: set[int], base: int, count: int) -> int:
    port = network_ports.free_port(used, base, count)
    if port is not None:
        return port
    raise Conflict(
        f"every host port of {base}-{base + count - 1} is forwarded on this host",
        hint="remove a port forward, or ask the admin to widen pat_port_base/pat_port_count",
        code="no_free_port",
    )


def decorate(
    session: Session,
    items: Sequence[wire_instances.Instance],
    rows: Sequence[Instance] | None = None,
) -> None:
    """Fill the NICs and port forwards of instances on the wire. An instance with NICs has no
    user-mode NIC: its address is the first NIC's (SSH port 22). ``rows``: the instances'
    rows when the caller has them (saves reading them again)."""
    ids = [item.id for item in items]
    by_instance = networks.nics_of(session, ids)
    with_nics = [i for i in ids if by_instance.get(i)]
    forwards = forwards_of(session, with_nics) if with_nics else {}  # PAT needs a NIC
    all_nics = nic_wire(session, [nic for group in by_instance.values() for nic in group])
    all_forwards = forward_wire(session, [f for group in forwards.values() for f in group])
    nics_by_id = {nic.id: nic for nic in all_nics}
    forwards_by_id = {f.id: f for f in all_forwards}
    if rows is None:
        user_mode = _user_mode_forwards(session, ids)
    else:
        names = {item.id: item.host_name or "" for item in items}
        user_mode = _user_mode_from(
            [(r, names.get(r.id, "")) for r in rows if r.host_id is not None]
        )
    for item in items:
        mine = by_instance.get(item.id, [])
        item.nics = [nics_by_id[nic.id] for nic in mine]
        item.port_forwards = [forwards_by_id[f.id] for f in forwards.get(item.id, [])]
        item.port_forwards += user_mode.get(item.id, [])
        if mine:
            first = next((nic.ipv4 for nic in mine if nic.ipv4), None)
            item.address = None if first is None else f"{first}:22"


def _user_mode_forwards(
    session: Session, instance_ids: Sequence[str]
) -> dict[str, list[wire.PortForward]]:
    """Forwards QEMU makes for user-mode instances (the image's declared ports)."""
    out: dict[str, list[wire.PortForward]] = {}
    if not instance_ids:
        return out
    rows = session.execute(
        select(Instance, Host.name)
        .join(Host, Host.id == Instance.host_id)
        .where(Instance.id.in_(list(instance_ids)))
    ).all()
    return _user_mode_from([(inst, name) for inst, name in rows])


def _user_mode_from(rows: Sequence[tuple[Instance, str]]) -> dict[str, list[wire.PortForward]]:
    out: dict[str, list[wire.PortForward]] = {}
    for inst, host_name in rows:
        for entry in network_ports.user_forwards(inst):
            out.setdefault(inst.id, []).append(
                wire.PortForward(
                    id=f"{inst.id}:{entry['protocol']}/{entry['host_port']}",
                    instance_id=inst.id,
                    protocol=str(entry["protocol"]),
                    host_port=int(entry["host_port"]),
                    target=network_ports.USER_MODE_GUEST,
                    target_port=int(entry["target_port"]),
                    host_id=str(inst.host_id),
                    host_name=host_name,
                )
            )
    return out
