"""Hypervisor hosts: join tokens, joining, heartbeats, listing with allocations."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Instance, JoinToken, utcnow
from stratuslab.errors import Conflict, InvalidInput, NotFound, Unauthorized
from stratuslab.schemas.agent import Heartbeat, JoinRequest
from stratuslab.services import events
from stratuslab.services.auth import Principal, hash_secret, new_secret
from stratuslab.services.placement import RELEASED
from stratuslab.types import HostState


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
    host.usage = dict(beat.usage)
    host.last_heartbeat = utcnow()
    if host.state == HostState.OFFLINE.value:
        host.state = HostState.ENABLED.value
        events.record(session, "host.online", f"host {host.name} is back", host_id=host.id)


def mark_offline(session: Session, grace: float) -> list[str]:
    cutoff = utcnow() - timedelta(seconds=grace)
    stale = list(
        session.scalars(
            select(Host).where(Host.state == HostState.ENABLED.value, Host.last_heartbeat < cutoff)
        )
    )
    for host in stale:
        host.state = HostState.OFFLINE.value
        events.record(
            session,
            "host.offline",
            f"host {host.name} missed heartbeats for {grace:.0f} s",
            level="warning",
            host_id=host.id,
        )
    return [h.id for h in stale]


def list_hosts(session: Session) -> list[tuple[Host, int, int, int]]:
    alloc = {
        hid: (int(c or 0), int(m or 0), int(n))
        for hid, c, m, n in session.execute(
            select(
                Instance.host_id,
                func.sum(Instance.vcpus),
                func.sum(Instance.memory_mib),
                func.count(),
            )
            .where(Instance.host_id.is_not(None), Instance.status.not_in(RELEASED))
            .group_by(Instance.host_id)
        )
    }
    return [
        (h, *alloc.get(h.id, (0, 0, 0))) for h in session.scalars(select(Host).order_by(Host.name))
    ]


def get_host(session: Session, ref: str) -> Host:
    host = session.get(Host, ref) or session.scalar(select(Host).where(Host.name == ref))
    if host is None:
        raise NotFound(f"host {ref!r} does not exist", hint="`stratus host list`")
    return host


def bump_all(session: Session) -> None:
    session.execute(update(Host).values(desired_generation=Host.desired_generation + 1))
