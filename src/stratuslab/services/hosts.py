"""Hypervisor hosts: join tokens, joining, heartbeats, listing with allocations."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Instance, JoinToken, PortForward, Volume, utcnow
from stratuslab.errors import Conflict, InvalidInput, NotFound, Unauthorized
from stratuslab.schemas.agent import Heartbeat, JoinRequest
from stratuslab.services import events, networks
from stratuslab.services import instances as inst_service
from stratuslab.services.auth import Principal, hash_secret, new_secret
from stratuslab.services.placement import RELEASED
from stratuslab.types import DesiredState as Desired
from stratuslab.types import HostState, InstanceStatus


def create_join_token(session: Session, principal: Principal, ttl: float) -> tuple[str, JoinToken]:
    principal.require_admin("creating a host join token")
    if not 0 < ttl <= 7 * 24 * 3600:
        raise InvalidInput(
            f"join token lifetime {ttl} s is out of range",
            hint="give --ttl between 1 second and 7 days",
        )
    secret = new_secret()
    row = JoinToken(token_hash=hash_secret(secret), expires_at=utcnow() + timedelta(seconds=ttl))
    session.add(row)
    session.flush()
    return secret, row


def join(session: Session, req: JoinRequest) -> tuple[Host, str]:
    """Consume a single-use join token and register the host; return it and its credential."""
    token = session.scalar(
        select(JoinToken).where(JoinToken.token_hash == hash_secret(req.token)).with_for_update()
    )
    if token is None or token.used_at is not None or token.expires_at < utcnow():
        raise Unauthorized(
            "the join token is unknown, already used or expired",
            hint="make a new one with `stratus admin host token`",
            code="invalid_join_token",
        )
    cap = req.capacity
    credential = new_secret()
    host = Host(
        name=cap.hostname,
        state=HostState.ENABLED.value,
        hypervisor=cap.hypervisor,
        arch=cap.arch,
        vcpus=cap.vcpus,
        memory_mib=cap.memory_mib,
        disk_gib=cap.disk_gib,
        credential_hash=hash_secret(credential),
        last_heartbeat=utcnow(),
        agent_version=cap.agent_version,
        labels=dict(cap.labels),
        migration_uri=cap.migration_uri,
    )
    session.add(host)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"a host named {cap.hostname!r} is already registered",
            hint="remove the old host first, or give the node another --hostname",
            code="duplicate_host",
        ) from exc
    token.used_at = utcnow()
    token.host_id = host.id
    events.record(
        session,
        "host.joined",
        f"host {host.name} joined: {cap.vcpus} vCPU, {cap.memory_mib} MiB, {cap.hypervisor}",
        host_id=host.id,
    )
    return host, credential


def heartbeat(session: Session, host: Host, beat: Heartbeat) -> None:
    cap = beat.capacity
    host.vcpus = cap.vcpus
    host.memory_mib = cap.memory_mib
    host.disk_gib = cap.disk_gib
    host.hypervisor = cap.hypervisor
    host.arch = cap.arch
    host.agent_version = cap.agent_version
    host.migration_uri = cap.migration_uri
    host.usage = {**beat.usage, "images": list(beat.images)}
    host.last_heartbeat = utcnow()
    if beat.error:
        if host.state != HostState.ERROR.value:
            host.state = HostState.ERROR.value
            host.state_reason = beat.error
            events.record(
                session,
                "host.error",
                f"host {host.name} cannot run instances: {beat.error}",
                level="error",
                host_id=host.id,
            )
        return
    if host.state in (HostState.OFFLINE.value, HostState.ERROR.value):
        was = host.state
        host.state = host.admin_state
        host.state_reason = ""
        events.record(
            session,
            "host.online",
            f"host {host.name} is back ({was} -> {host.state})",
            host_id=host.id,
        )


#: host states that still get heartbeats checked
_WATCHED = (
    HostState.ENABLED.value,
    HostState.DISABLED.value,
    HostState.DRAINING.value,
    HostState.ERROR.value,
)


def mark_offline(session: Session, grace: float) -> list[str]:
    """Hosts silent for ``grace`` seconds go offline; their instances become unknown."""
    cutoff = utcnow() - timedelta(seconds=grace)
    stale = list(
        session.scalars(select(Host).where(Host.state.in_(_WATCHED), Host.last_heartbeat < cutoff))
    )
    for host in stale:
        host.state = HostState.OFFLINE.value
        host.state_reason = f"no heartbeat for {grace:.0f} s"
        events.record(
            session,
            "host.offline",
            f"host {host.name} missed heartbeats for {grace:.0f} s",
            level="warning",
            host_id=host.id,
        )
        _instances_unknown(session, host)
    return [h.id for h in stale]


def _instances_unknown(session: Session, host: Host) -> None:
    # its agent, if it is still there, sees the statuses it must correct (agent/sync.py)
    host.bump()
    for inst in session.scalars(
        select(Instance).where(Instance.host_id == host.id, Instance.status.not_in(RELEASED))
    ):
        if inst.desired == Desired.DELETED.value:
            # nobody can clean it up now; the host destroys it when it returns (fencing)
            inst_service.mark_deleted(inst)
            networks.release_instance(session, inst)
            continue
        if inst.status != InstanceStatus.UNKNOWN.value:
            inst.status = InstanceStatus.UNKNOWN.value
            inst.status_reason = f"host {host.name} is offline"
            inst.updated_at = utcnow()
            events.record(
                session,
                "instance.unknown",
                f"host {host.name} is offline; the instance's state is unknown",
                level="warning",
                instance_id=inst.id,
                host_id=host.id,
                project_id=inst.project_id,
            )


def list_hosts(session: Session) -> list[tuple[Host, int, int, int, int]]:
    """Hosts with their allocations: vCPUs, MiB, instances, disk GiB."""
    alloc = {
        hid: (int(c or 0), int(m or 0), int(n), int(d or 0))
        for hid, c, m, n, d in session.execute(
            select(
                Instance.host_id,
                func.sum(Instance.vcpus),
                func.sum(Instance.memory_mib),
                func.count(),
                func.sum(Instance.disk_gib),
            )
            .where(Instance.host_id.is_not(None), Instance.status.not_in(RELEASED))
            .group_by(Instance.host_id)
        )
    }
    return [
        (h, *alloc.get(h.id, (0, 0, 0, 0)))
        for h in session.scalars(select(Host).order_by(Host.name))
    ]


def get_host(session: Session, ref: str) -> Host:
    host = session.get(Host, ref) or session.scalar(select(Host).where(Host.name == ref))
    if host is None:
        raise NotFound(f"host {ref!r} does not exist", hint="`stratus host list`")
    return host


def bump_all(session: Session) -> None:
    session.execute(update(Host).values(desired_generation=Host.desired_generation + 1))


# -- administration ------------------------------------------------------------------------

#: what an admin may ask for, and the state each leads to
ADMIN_STATES = {
    "enable": HostState.ENABLED,
    "disable": HostState.DISABLED,
    "drain": HostState.DRAINING,
}


def set_admin_state(
    session: Session, principal: Principal, ref: str, action: str, reason: str = ""
) -> Host:
    """enable | disable (no new placements) | drain (no new placements; instances move away)."""
    principal.require_admin(f"{action} a host")
    target = ADMIN_STATES.get(action)
    if target is None:
        raise InvalidInput(f"unknown host action {action!r}", hint="use enable, disable or drain")
    host = get_host(session, ref)
    if target is HostState.DRAINING:
        others = session.scalar(
            select(func.count())
            .select_from(Host)
            .where(Host.id != host.id, Host.state == HostState.ENABLED.value)
        )
        if not others:
            raise Conflict(
                f"host {host.name} is the last enabled host: its instances have nowhere to go",
                hint="enable or join another host first, or `stratus host disable` this one",
                code="last_host",
            )
    before = host.admin_state
    host.admin_state = target.value
    if host.state not in (HostState.OFFLINE.value, HostState.ERROR.value):
        host.state = target.value
        host.state_reason = reason
    if before != target.value:
        events.record(
            session,
            f"host.{target.value}",
            f"host {host.name}: {before} -> {target.value}" + (f" ({reason})" if reason else ""),
            host_id=host.id,
        )
    return host


def update_host(
    session: Session,
    principal: Principal,
    ref: str,
    *,
    labels: dict[str, str | None] | None = None,
    ratios: dict[str, float | None] | None = None,
) -> Host:
    """Set or remove (value None) labels; set overcommit ratios (None: the cloud default)."""
    principal.require_admin("changing a host")
    host = get_host(session, ref)
    if labels:
        merged = dict(host.labels or {})
        for key, value in labels.items():
            if not key or not key.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise InvalidInput(
                    f"host label name {key!r} is not valid",
                    hint="use letters, digits, '-', '_' and '.' (e.g. gpu, rack-1)",
                )
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        host.labels = merged
    for name, ratio in (ratios or {}).items():
        if name not in ("cpu_ratio", "ram_ratio", "disk_ratio"):
            raise InvalidInput(f"unknown ratio {name!r}", hint="cpu_ratio, ram_ratio, disk_ratio")
        if ratio is not None and not 0 < ratio <= 100:
            raise InvalidInput(
                f"{name} {ratio} is out of range",
                hint="give an overcommit ratio above 0 and at most 100 (1.0: none)",
            )
        setattr(host, name, ratio)
    events.record(session, "host.updated", f"host {host.name} updated", host_id=host.id)
    return host


def remove_host(session: Session, principal: Principal, ref: str) -> str:
    """Forget a host that runs nothing and keeps no volumes; its credential stops working."""
    principal.require_admin("removing a host")
    host = get_host(session, ref)
    running = session.scalar(
        select(func.count())
        .select_from(Instance)
        .where(Instance.host_id == host.id, Instance.status.not_in(RELEASED))
    )
    if running:
        raise Conflict(
            f"host {host.name} still has {running} instance(s)",
            hint=f"`stratus host drain {host.name}` moves them away; remove it when it is empty",
            code="host_not_empty",
        )
    kept = session.scalar(
        select(func.count())
        .select_from(Volume)
        .where(Volume.host_id == host.id, Volume.state != "deleted")
    )
    if kept:
        raise Conflict(
            f"host {host.name} keeps {kept} volume(s) in its pool",
            hint="delete or purge them first (`stratus volume list --all`)",
            code="host_has_volumes",
        )
    session.execute(update(Instance).where(Instance.host_id == host.id).values(host_id=None))
    session.execute(update(Volume).where(Volume.host_id == host.id).values(host_id=None))
    session.execute(delete(PortForward).where(PortForward.host_id == host.id))
    name = host.name
    events.record(session, "host.removed", f"host {name} removed", host_id=host.id)
    session.delete(host)
    return name
