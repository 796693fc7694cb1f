"""Security groups: per-project allow rules, applied on the hosts per instance interface.

Every project has a group called ``default`` (made on first use): all egress, SSH and ICMP
ingress. A NIC uses one group. A rule allows traffic by direction, protocol, port range and
remote: a CIDR, anywhere, or another group of the project (the addresses of its NICs, expanded
here when the desired state is built). A change to a group bumps the desired state of every
host running a NIC that uses it (or a group whose rules name it), so the agents re-apply the
rules at once; connections already established survive, new ones see the new rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Instance, InstanceNic, SecurityGroup, SecurityRule
from stratuslab.drivers.network import base as netbase
from stratuslab.errors import Conflict, InvalidInput, NotFound
from stratuslab.identity.authz import Action, Kind, Visibility, authorize, read_filter
from stratuslab.schemas.networks import SecurityGroupCreate, SecurityRuleCreate
from stratuslab.services import access
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork
from stratuslab.types import DesiredState

DEFAULT_GROUP = "default"
#: the default group's rules: (direction, protocol, port_min, port_max)
DEFAULT_RULES = (
    ("egress", "any", None, None),
    ("ingress", "tcp", 22, 22),
    ("ingress", "icmp", None, None),
)


@dataclass(frozen=True)
class Allow:
    """One rule as a host applies it (remote groups already expanded to a CIDR)."""

    direction: str
    protocol: str
    port_min: int | None
    port_max: int | None
    remote: str | None


# -- groups ------------------------------------------------------------------------------


def ensure_default(session: Session, project_id: str, owner_id: str) -> SecurityGroup:
    group = session.scalar(
        select(SecurityGroup).where(
            SecurityGroup.project_id == project_id, SecurityGroup.name == DEFAULT_GROUP
        )
    )
    if group is not None:
        return group
    group = SecurityGroup(
        name=DEFAULT_GROUP,
        description="all egress; SSH and ICMP ingress",
        owner_id=owner_id,
        project_id=project_id,
    )
    session.add(group)
    session.flush()
    for direction, protocol, low, high in DEFAULT_RULES:
        session.add(
            SecurityRule(
                group_id=group.id,
                direction=direction,
                protocol=protocol,
                port_min=low,
                port_max=high,
            )
        )
    session.flush()
    return group


def list_groups(session: Session, principal: Principal) -> list[SecurityGroup]:
    ensure_default(session, principal.project_id, principal.user_id)
    flt = read_filter(principal, Kind.ADDRESS)
    clause = access.visible_clause(flt, SecurityGroup.project_id, SecurityGroup.owner_id)
    stmt = select(SecurityGroup).where(clause).order_by(SecurityGroup.name, SecurityGroup.id)
    return list(session.scalars(stmt))


def get_group(
    session: Session,
    principal: Principal,
    ref: str,
    action: Action = Action.READ,
    *,
    project_id: str | None = None,
) -> SecurityGroup:
    """A group by id, or by name in ``project_id`` (default: the acting project)."""
    project = project_id or principal.project_id
    if ref == DEFAULT_GROUP:
        ensure_default(session, project, principal.user_id)
    group = session.get(SecurityGroup, ref) or session.scalar(
        select(SecurityGroup).where(SecurityGroup.project_id == project, SecurityGroup.name == ref)
    )
    missing = NotFound(
        f"security group {ref!r} does not exist",
        hint="see `stratus secgroup list`",
        code="security_group_not_found",
    )
    if group is None:
        raise missing
    try:
        authorize(
            principal,
            action,
            kind=Kind.ADDRESS,
            resource_owner_project=group.project_id,
            resource_visibility=Visibility.PROJECT,
            resource_owner_user=group.owner_id,
            ref=ref,
        )
    except NotFound:
        raise missing from None
    return group


def group_for_nic(
    session: Session, principal: Principal, inst: Instance, ref: str | None
) -> SecurityGroup:
    """The group a new NIC of ``inst`` uses: ``ref`` of the instance's project, or default."""
    if ref is None:
        return ensure_default(session, inst.project_id, inst.owner_id)
    group = get_group(session, principal, ref, Action.USE, project_id=inst.project_id)
    if group.project_id != inst.project_id:
        raise InvalidInput(
            f"security group {group.name} belongs to another project than instance {inst.name}",
            hint="use a group of the instance's project",
        )
    return group


def create_group(uow: UnitOfWork, principal: Principal, req: SecurityGroupCreate) -> SecurityGroup:
    s = uow.session
    access.authorize_create(principal, Kind.ADDRESS)
    ensure_default(s, principal.project_id, principal.user_id)
    taken = s.scalar(
        select(SecurityGroup.id).where(
            SecurityGroup.project_id == principal.project_id, SecurityGroup.name == req.name
        )
    )
    if taken is not None:
        raise Conflict(
            f"security group {req.name} exists already in this project",
            hint="pick another name",
            code="duplicate_name",
        )
    group = SecurityGroup(
        name=req.name,
        description=req.description,
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    s.add(group)
    s.flush()
    return group


def delete_group(uow: UnitOfWork, principal: Principal, ref: str) -> None:
    s = uow.session
    group = get_group(s, principal, ref, Action.DELETE)
    if group.name == DEFAULT_GROUP:
        raise Conflict(
            "the default security group cannot be deleted",
            hint="change its rules instead (`stratus secgroup rule add|remove default ...`)",
        )
    users = nic_count(s, [group.id]).get(group.id, 0)
    if users:
        raise Conflict(
            f"security group {group.name} is used by {users} NIC(s)",
            hint="detach those NICs or delete their instances first",
            code="security_group_in_use",
        )
    referenced = s.scalar(
        select(SecurityGroup.name)
        .join(SecurityRule, SecurityRule.group_id == SecurityGroup.id)
        .where(SecurityRule.remote_group_id == group.id, SecurityGroup.id != group.id)
    )
    if referenced is not None:
        raise Conflict(
            f"security group {group.name} is named by a rule of group {referenced}",
            hint=f"remove that rule from {referenced} first",
            code="security_group_in_use",
        )
    s.delete(group)


def nic_count(session: Session, group_ids: Sequence[str]) -> dict[str, int]:
    if not group_ids:
        return {}
    stmt = (
        select(InstanceNic.security_group_id, func.count())
        .where(InstanceNic.security_group_id.in_(list(group_ids)))
        .group_by(InstanceNic.security_group_id)
    )
    return {str(gid): int(n) for gid, n in session.execute(stmt)}


# -- rules -------------------------------------------------------------------------------


def add_rule(
    uow: UnitOfWork, principal: Principal, ref: str, req: SecurityRuleCreate
) -> SecurityRule:
    s = uow.session
    group = get_group(s, principal, ref, Action.UPDATE)
    remote_group = None
    if req.remote is not None and req.remote_group is not None:
        raise InvalidInput(
            "a rule has a remote CIDR or a remote group, not both", hint="drop one of them"
        )
    if req.remote_group is not None:
        remote_group = get_group(s, principal, req.remote_group, project_id=group.project_id)
    remote = None if req.remote is None else _parse_cidr(req.remote)
    netbase.SecurityRule(  # the host driver's own validation: ports need tcp/udp, low <= high
        direction=netbase.Direction(req.direction),
        protocol=netbase.IpProtocol(req.protocol),
        port_min=req.port_min,
        port_max=req.port_max,
        remote=remote,
    )
    rule = SecurityRule(
        group_id=group.id,
        direction=req.direction,
        protocol=req.protocol,
        port_min=req.port_min,
        port_max=req.port_max if req.port_max is not None else req.port_min,
        remote_cidr=None if remote is None else str(remote),
        remote_group_id=None if remote_group is None else remote_group.id,
    )
    s.add(rule)
    s.flush()
    touch_hosts(uow, [group.id])
    return rule


def remove_rule(uow: UnitOfWork, principal: Principal, ref: str, rule_id: str) -> None:
    s = uow.session
    group = get_group(s, principal, ref, Action.UPDATE)
    rule = s.get(SecurityRule, rule_id)
    if rule is None or rule.group_id != group.id:
        raise NotFound(
            f"security group {group.name} has no rule {rule_id}",
            hint=f"see `stratus secgroup show {group.name}`",
            code="security_rule_not_found",
        )
    s.delete(rule)
    s.flush()
    touch_hosts(uow, [group.id])


def rules_of(session: Session, group_ids: Iterable[str]) -> dict[str, list[SecurityRule]]:
    ids = sorted(set(group_ids))
    out: dict[str, list[SecurityRule]] = {gid: [] for gid in ids}
    if not ids:
        return out
    stmt = (
        select(SecurityRule)
        .where(SecurityRule.group_id.in_(ids))
        .order_by(SecurityRule.created_at, SecurityRule.id)
    )
    for rule in session.scalars(stmt):
        out[rule.group_id].append(rule)
    return out


def host_rules(session: Session, group_ids: Iterable[str]) -> dict[str, list[Allow]]:
    """The rules of each group as hosts apply them: remote groups become their members'
    addresses (a remote group without members allows nothing)."""
    rules = rules_of(session, group_ids)
    remote_ids = {r.remote_group_id for rs in rules.values() for r in rs if r.remote_group_id}
    members = _member_addresses(session, remote_ids)
    out: dict[str, list[Allow]] = {}
    for gid, group_rules in rules.items():
        allows: list[Allow] = []
        for rule in group_rules:
            remotes: list[str | None] = [rule.remote_cidr]
            if rule.remote_group_id is not None:
                remotes = list(members.get(rule.remote_group_id, []))
            allows += [
                Allow(rule.direction, rule.protocol, rule.port_min, rule.port_max, remote)
                for remote in remotes
            ]
        out[gid] = allows
    return out


def touch_hosts(uow: UnitOfWork, group_ids: Sequence[str], *, members: bool = True) -> None:
    """Bump the desired state of every host with a NIC in these groups (unless not
    ``members``), or in a group whose rules name them; wake their agents after the commit."""
    s = uow.session
    naming = s.scalars(
        select(SecurityRule.group_id).where(SecurityRule.remote_group_id.in_(list(group_ids)))
    ).all()
    groups = {*(group_ids if members else ()), *naming}
    if not groups:
        return
    host_ids = s.scalars(
        select(Instance.host_id)
        .join(InstanceNic, InstanceNic.instance_id == Instance.id)
        .where(InstanceNic.security_group_id.in_(sorted(groups)), Instance.host_id.is_not(None))
        .distinct()
    ).all()
    for host_id in host_ids:
        host = s.get(Host, host_id)
        if host is not None:
            host.bump()
            uow.notify(f"host:{host_id}")


def _member_addresses(session: Session, group_ids: Iterable[str | None]) -> dict[str, list[str]]:
    ids = sorted(g for g in group_ids if g is not None)
    out: dict[str, list[str]] = {}
    if not ids:
        return out
    # an instance whose delete was asked for is no member any more (its NIC rows stay until
    # it is gone, so that its addresses are not handed out while the guest may hold them)
    stmt = (
        select(InstanceNic)
        .join(Instance, Instance.id == InstanceNic.instance_id)
        .where(
            InstanceNic.security_group_id.in_(ids),
            or_(InstanceNic.ipv4.is_not(None), InstanceNic.ipv6.is_not(None)),
            Instance.desired != DesiredState.DELETED.value,
        )
    )
    for nic in session.scalars(stmt.order_by(InstanceNic.created_at, InstanceNic.id)):
        group = str(nic.security_group_id)
        if nic.ipv4 is not None:
            out.setdefault(group, []).append(f"{nic.ipv4}/32")
        if nic.ipv6 is not None:
            out.setdefault(group, []).append(f"{nic.ipv6}/128")
    return out


def _parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidInput(
            f"malformed remote CIDR {text!r}: {exc}",
            hint="write a network address and prefix, e.g. 198.51.100.0/24 or 0.0.0.0/0",
        ) from None
