"""Networks and the addresses of instance NICs.

The pure rules live in :mod:`stratuslab.networks.ipam`: this module loads rows into
:class:`~stratuslab.networks.ipam.NetworkDefinition` / :class:`~stratuslab.networks.ipam.LeaseBook`,
lets them decide, and writes the outcome. Every decision is made before anything is written,
so a refused request changes nothing (the caller's transaction rolls back anyway).

Rows: ``networks`` (the definitions), ``instance_nics`` (one per NIC: the active lease), and
``network_leases`` (the history, kept forever: a lease row is opened when a NIC gets its
addresses and closed when the NIC goes, whatever happens to the network or the instance).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from stratuslab.db.models import (
    Instance,
    InstanceNic,
    Network,
    NetworkLease,
    PortForward,
    utcnow,
)
from stratuslab.errors import Conflict, InvalidInput, NotFound
from stratuslab.identity.authz import Action, Kind, Visibility, authorize, read_filter
from stratuslab.networks import ipam
from stratuslab.schemas.networks import NetworkCreate
from stratuslab.services import access, network_ports, secgroups
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork

#: VXLAN network identifiers handed out to private networks start here
VNI_BASE = 10000
DEFAULT_MAC_PREFIX = ipam.DEFAULT_MAC_PREFIX


@dataclass(frozen=True)
class NicRequest:
    """One ``--network NAME[:ip=ADDR]`` of a run request, or one NIC attach."""

    network: str
    ipv4: str | None = None
    ipv6: str | None = None
    security_group: str | None = None


# -- networks ----------------------------------------------------------------------------


def create_network(uow: UnitOfWork, principal: Principal, req: NetworkCreate) -> Network:
    s = uow.session
    private = req.address_class == ipam.AddressClass.PRIVATE.value
    if private:
        access.authorize_create(principal, Kind.ADDRESS)
    else:
        principal.require_admin(f"creating a {req.address_class} network")
    definition = ipam.define_network(
        name=req.name,
        address_class=req.address_class,
        cidr4=req.cidr4,
        gateway4=req.gateway4,
        pools=req.pools,
        cidr6=req.cidr6,
        gateway6=req.gateway6,
        dns=req.dns,
        mtu=req.mtu,
        project=principal.project_id if private else None,
    )
    _check_driver(req)
    existing = s.scalars(select(Network).with_for_update())
    ipam.check_overlap(definition, [definition_of(row) for row in existing])
    row = Network(
        name=definition.name,
        address_class=definition.address_class.value,
        driver=req.driver,
        cidr4=_str(definition.cidr4),
        gateway4=_str(definition.gateway4),
        pools=[str(pool) for pool in definition.pools],
        cidr6=_str(definition.cidr6),
        gateway6=_str(definition.gateway6),
        dns=[str(server) for server in definition.dns],
        mtu=definition.mtu,
        uplink=req.uplink,
        vlan=req.vlan,
        vni=_next_vni(s) if req.driver == "vxlan" else None,
        visibility=req.visibility or ("project" if private else "public"),
        description=req.description,
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    s.add(row)
    s.flush()
    return row


def list_networks(session: Session, principal: Principal) -> list[Network]:
    flt = read_filter(principal, Kind.ADDRESS)
    clause = access.visible_clause(flt, Network.project_id, Network.owner_id, Network.visibility)
    return list(session.scalars(select(Network).where(clause).order_by(Network.name)))


def get_network(
    session: Session, principal: Principal, ref: str, action: Action = Action.READ
) -> Network:
    """A network by id or name that ``principal`` may ``action`` (NotFound / Forbidden)."""
    row = session.get(Network, ref) or session.scalar(select(Network).where(Network.name == ref))
    if row is None:
        raise NotFound(
            f"network {ref!r} does not exist",
            hint="see `stratus network list`",
            code="network_not_found",
        )
    try:
        authorize(
            principal,
            action,
            kind=Kind.ADDRESS,
            resource_owner_project=row.project_id,
            resource_visibility=Visibility(row.visibility),
            resource_owner_user=row.owner_id,
            ref=ref,
        )
    except NotFound:
        raise NotFound(
            f"network {ref!r} does not exist",
            hint="see `stratus network list`",
            code="network_not_found",
        ) from None
    return row


def delete_network(uow: UnitOfWork, principal: Principal, ref: str) -> None:
    s = uow.session
    row = get_network(s, principal, ref, Action.DELETE)
    if row.address_class != ipam.AddressClass.PRIVATE.value:
        principal.require_admin(f"deleting a {row.address_class} network")
    users = list(
        s.scalars(
            select(Instance.name)
            .join(InstanceNic, InstanceNic.instance_id == Instance.id)
            .where(InstanceNic.network_id == row.id)
            .order_by(Instance.name)
            .limit(6)
        )
    )
    if users:
        shown = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
        raise Conflict(
            f"network {row.name} is in use by instance(s) {shown}",
            hint="detach their NICs (`stratus nic detach`) or delete them first",
            code="network_in_use",
        )
    s.delete(row)


def leased_counts(session: Session, network_ids: Iterable[str]) -> dict[str, int]:
    ids = list(network_ids)
    if not ids:
        return {}
    stmt = (
        select(InstanceNic.network_id, func.count())
        .where(InstanceNic.network_id.in_(ids), InstanceNic.ipv4.is_not(None))
        .group_by(InstanceNic.network_id)
    )
    return {network_id: int(count) for network_id, count in session.execute(stmt)}


def network_leases(
    session: Session,
    principal: Principal,
    ref: str,
    *,
    address: str | None = None,
    at: datetime | None = None,
    active: bool = False,
) -> list[NetworkLease]:
    """The lease history of a network, oldest first; narrowed to one ``address``, the leases
    held at time ``at``, or the active ones."""
    row = get_network(session, principal, ref)
    stmt = select(NetworkLease).where(NetworkLease.network_id == row.id)
    if address is not None:
        wanted = str(ipam.parse_address(address))
        stmt = stmt.where(or_(NetworkLease.ipv4 == wanted, NetworkLease.ipv6 == wanted))
    if at is not None:
        stmt = stmt.where(
            NetworkLease.since <= at, or_(NetworkLease.until.is_(None), NetworkLease.until > at)
        )
    if active:
        stmt = stmt.where(NetworkLease.until.is_(None))
    return list(session.scalars(stmt.order_by(NetworkLease.since, NetworkLease.id)))


def definition_of(row: Network) -> ipam.NetworkDefinition:
    """The pure definition of a stored network (already validated when it was created)."""
    return ipam.define_network(
        name=row.name,
        address_class=row.address_class,
        cidr4=row.cidr4,
        gateway4=row.gateway4,
        pools=list(row.pools or []),
        cidr6=row.cidr6,
        gateway6=row.gateway6,
        dns=list(row.dns or []),
        mtu=row.mtu,
        project=row.project_id if row.address_class == ipam.AddressClass.PRIVATE.value else None,
    )


# -- NICs --------------------------------------------------------------------------------


def parse_requests(items: Sequence[str], *, security_group: str | None = None) -> list[NicRequest]:
    """``NAME[:ip=ADDR][:ipv6=ADDR]`` items of ``stratus run --network``."""
    requests = []
    for item in items:
        name, *options = item.strip().split(":ip")
        values: dict[str, str] = {}
        for option in options:
            key, sep, value = ("ip" + option).partition("=")
            if not sep or key not in ("ip", "ipv6") or key in values or not value:
                raise InvalidInput(
                    f"malformed network request {item!r}",
                    hint="write NAME, NAME:ip=ADDRESS or NAME:ip=ADDRESS:ipv6=ADDRESS",
                )
            values[key] = value
        if not name:
            raise InvalidInput(f"network request {item!r} names no network", hint="NAME[:ip=ADDR]")
        requests.append(
            NicRequest(name, values.get("ip"), values.get("ipv6"), security_group=security_group)
        )
    return requests


def allocate_nics(
    session: Session,
    principal: Principal,
    inst: Instance,
    requests: Sequence[NicRequest],
    *,
    mac_prefix: str = DEFAULT_MAC_PREFIX,
    now: datetime | None = None,
) -> list[InstanceNic]:
    """Give ``inst`` one NIC per request: MAC, addresses, security group; open the leases."""
    now = now or utcnow()
    taken = session.scalars(
        select(InstanceNic.index).where(InstanceNic.instance_id == inst.id)
    ).all()
    index = max(taken, default=-1) + 1
    books: dict[str, tuple[Network, ipam.LeaseBook]] = {}
    made = []
    for request in requests:
        network = get_network(session, principal, request.network, Action.USE)
        if network.id not in books:
            books[network.id] = (network, book_of(session, network))
        group = secgroups.group_for_nic(session, principal, inst, request.security_group)
        mac = _new_mac(session, f"{inst.id}/{index}", mac_prefix)
        lease = books[network.id][1].lease(
            instance=inst.id, mac=mac, now=now, ipv4=request.ipv4, ipv6=request.ipv6
        )
        made.append(_store(session, inst, network, lease, index=index, group_id=group.id))
        index += 1
    session.flush()
    return made


def release_nic(session: Session, nic: InstanceNic, *, now: datetime | None = None) -> None:
    """Close the NIC's lease and drop it (its port forwards go with it)."""
    now = now or utcnow()
    for lease in session.scalars(
        select(NetworkLease).where(
            NetworkLease.instance_id == nic.instance_id,
            NetworkLease.mac == nic.mac,
            NetworkLease.until.is_(None),
        )
    ):
        lease.until = max(now, lease.since)
    for forward in session.scalars(select(PortForward).where(PortForward.nic_id == nic.id)):
        session.delete(forward)
    session.flush()  # the forwards first: no ORM relationship orders these deletes
    session.delete(nic)


def release_instance(session: Session, inst: Instance, *, now: datetime | None = None) -> None:
    """Close every lease of ``inst`` (it is gone): the addresses are free again."""
    for nic in nics_of(session, [inst.id]).get(inst.id, []):
        release_nic(session, nic, now=now)
    session.flush()


def nics_of(session: Session, instance_ids: Sequence[str]) -> dict[str, list[InstanceNic]]:
    if not instance_ids:
        return {}
    out: dict[str, list[InstanceNic]] = {}
    stmt = (
        select(InstanceNic)
        .where(InstanceNic.instance_id.in_(list(instance_ids)))
        .order_by(InstanceNic.instance_id, InstanceNic.index)
    )
    for nic in session.scalars(stmt):
        out.setdefault(nic.instance_id, []).append(nic)
    return out


def find_nic(session: Session, inst: Instance, ref: str) -> InstanceNic:
    """A NIC of ``inst`` by index, MAC or network name."""
    for nic in nics_of(session, [inst.id]).get(inst.id, []):
        network = session.get(Network, nic.network_id)
        if ref in (str(nic.index), nic.mac, nic.id) or (network and network.name == ref):
            return nic
    raise NotFound(
        f"instance {inst.name} has no NIC {ref!r}",
        hint=f"see `stratus show {inst.name}`; name a NIC by index, MAC or network",
        code="nic_not_found",
    )


def book_of(session: Session, network: Network) -> ipam.LeaseBook:
    """The active leases of ``network`` (its NICs) in a LeaseBook that can add to them."""
    active = [
        ipam.Lease(
            network=network.name,
            instance=nic.instance_id,
            mac=nic.mac,
            ipv4=None if nic.ipv4 is None else ipaddress.IPv4Address(nic.ipv4),
            ipv6=None if nic.ipv6 is None else ipaddress.IPv6Address(nic.ipv6),
            since=nic.created_at,
        )
        for nic in session.scalars(
            select(InstanceNic).where(InstanceNic.network_id == network.id).with_for_update()
        )
    ]
    return ipam.LeaseBook(definition_of(network), active)


# -- helpers -----------------------------------------------------------------------------


def _store(
    session: Session,
    inst: Instance,
    network: Network,
    lease: ipam.Lease,
    *,
    index: int,
    group_id: str,
) -> InstanceNic:
    nic = InstanceNic(
        instance_id=inst.id,
        network_id=network.id,
        index=index,
        mac=lease.mac,
        ipv4=_str(lease.ipv4),
        ipv6=_str(lease.ipv6),
        security_group_id=group_id,
    )
    session.add(nic)
    session.add(
        NetworkLease(
            network_id=network.id,
            network_name=network.name,
            instance_id=inst.id,
            instance_name=inst.name,
            project_id=inst.project_id,
            mac=lease.mac,
            ipv4=nic.ipv4,
            ipv6=nic.ipv6,
            since=lease.since,
        )
    )
    return nic


def _new_mac(session: Session, seed: str, prefix: str) -> str:
    """A locally administered MAC derived from ``seed``, probing past MACs in use."""
    used: set[str] = set()
    while True:
        mac = ipam.allocate_mac(used, prefix=prefix, seed=seed)
        if session.scalar(select(InstanceNic.id).where(InstanceNic.mac == mac)) is None:
            return mac
        used.add(mac)


def _next_vni(session: Session) -> int:
    highest = session.scalar(select(func.max(Network.vni)))
    return VNI_BASE if highest is None else int(highest) + 1


def _check_driver(req: NetworkCreate) -> None:
    if req.driver == "vxlan" and req.address_class != ipam.AddressClass.PRIVATE.value:
        raise InvalidInput(
            f"network {req.name}: the vxlan driver is for private networks",
            hint="use --driver bridge (with --uplink) for public and local networks",
        )
    if req.driver == "vxlan" and req.uplink is not None:
        raise InvalidInput(
            f"network {req.name}: a vxlan network has no uplink", hint="drop --uplink"
        )
    if req.vlan is not None and (req.uplink is None or not 1 <= req.vlan <= 4094):
        raise InvalidInput(
            f"network {req.name}: VLAN {req.vlan} needs an uplink and a tag in 1-4094",
            hint="give --uplink IFACE with --vlan",
        )
    if req.uplink is not None and len(req.uplink) > 15:
        raise InvalidInput(f"uplink name {req.uplink!r} is too long", hint="at most 15 bytes")


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# -- hooks of the instance lifecycle (services/instances.py) -----------------------------


def attach_at_create(
    uow: UnitOfWork,
    principal: Principal,
    inst: Instance,
    requested: Sequence[str],
    group: str | None,
) -> None:
    """The NICs of ``stratus run --network NAME[:ip=ADDR] ...``, in the create transaction."""
    made: list[InstanceNic] = []
    if requested:
        requests = parse_requests(requested, security_group=group)
        made = allocate_nics(
            uow.session, principal, inst, requests, mac_prefix=uow.ctx.settings.mac_prefix
        )
        secgroups.touch_hosts(uow, sorted({str(nic.security_group_id) for nic in made}))
    network_ports.placed(uow, inst, new_nics=made)


def instance_placed(uow: UnitOfWork, inst: Instance) -> None:
    """Call right after ``inst`` got a host (``inst.host_id`` set; first placement, a pending
    instance placed later, or a re-placement): host ports for SSH and the image's declared
    inbound ports (PAT on local/private networks, QEMU forwards in user mode), and the hosts
    sharing its VXLAN networks learn their new peer. Idempotent; a no-op without a host."""
    network_ports.placed(uow, inst)


def instance_moved(uow: UnitOfWork, inst: Instance, old_host_id: str | None) -> None:
    """Call before ``inst`` is re-placed away from ``old_host_id`` (HA restart, cold
    migration): its host ports there are released (re-made on the next host by
    :func:`instance_placed`), the old host and the hosts sharing its VXLAN networks are
    told. Its NICs, MACs and leases stay (addresses are managed cloud-wide)."""
    network_ports.moved(uow, inst, old_host_id)


def instance_deleted(uow: UnitOfWork, inst: Instance) -> None:
    """The delete of ``inst`` was asked for. Its addresses leave the remote-group rules of
    other instances and its host leaves the VXLAN peers of its networks at once (the hosts
    concerned are bumped); the addresses themselves are given back only when it is gone."""
    mine = nics_of(uow.session, [inst.id]).get(inst.id, [])
    if mine:
        groups = sorted({str(nic.security_group_id) for nic in mine})
        secgroups.touch_hosts(uow, groups, members=False)  # the rules that name its groups
        network_ports.touch_vxlan_hosts(uow, {nic.network_id for nic in mine})
    if inst.status == "deleted":
        release_instance(uow.session, inst)
