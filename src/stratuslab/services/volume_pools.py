"""Volume pools: the volume storage of a host's node agent, and the choice of a pool with room.

A node reports the free space of its pool in its heartbeat usage (``POOL_FREE``); the volumes
being made there since are counted against it.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Volume
from stratuslab.errors import CapacityError
from stratuslab.services.volume_states import POOL_FREE, POOL_SHARED, VolumeState, gib_text
from stratuslab.types import HostState


def pool_hosts(session: Session) -> list[Host]:
    hosts = session.scalars(select(Host).where(Host.state == HostState.ENABLED.value))
    return [h for h in hosts if POOL_FREE in (h.usage or {})]


def free_bytes(session: Session, host: Host) -> int:
    """The pool's free space as last reported, less what is being made there since."""
    pending = session.scalars(
        select(Volume.size_bytes).where(
            Volume.host_id == host.id,
            Volume.state == VolumeState.CREATING.value,
            Volume.observed_generation < Volume.generation,
        )
    )
    return int(host.usage.get(POOL_FREE, 0)) - sum(pending)


def pick_pool(session: Session, size_bytes: int) -> Host:
    """The pool with the most free space; CapacityError when none has room."""
    hosts = pool_hosts(session)
    if not hosts:
        raise CapacityError(
            "no host offers volume storage",
            hint="start a node agent with a volume backend (volume_backend in node.toml)",
            code="no_volume_pool",
        )
    best = max(hosts, key=lambda h: free_bytes(session, h))
    check_free(session, best, size_bytes)
    return best


def check_free(session: Session, host: Host, size_bytes: int) -> None:
    free = free_bytes(session, host)
    if size_bytes > free:
        raise CapacityError(
            f"{gib_text(size_bytes)} does not fit: the volume pool on {host.name} has "
            f"{gib_text(max(free, 0))} free",
            hint="make it smaller, or delete (and purge) volumes you do not need",
            code="volume_too_large",
        )


def pool_host(session: Session, host_id: str | None) -> Host:
    host = session.get(Host, host_id) if host_id else None
    if host is None:
        raise CapacityError("the volume's host is gone", hint="ask an admin", code="no_host")
    return host


def pool_shared(session: Session, host_id: str | None) -> bool:
    """Whether the pool of ``host_id`` exports to other hosts (iSCSI, or a shared mount)."""
    host = session.get(Host, host_id) if host_id else None
    return host is not None and bool((host.usage or {}).get(POOL_SHARED))
