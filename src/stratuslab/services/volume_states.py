"""The state of a volume: its states and kinds, how a state moves, and the events it records.

States: ``creating -> available <-> attaching -> in-use -> detaching -> available``;
``deleting -> deleted``; ``error``; ``quarantined`` (services/quarantine.py). The state of a
made volume follows from its attachments (``settle``). A change the node must carry out bumps
the volume's (or the instance's) generation and the desired state of its host.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Instance, Volume, VolumeAttachment, utcnow
from stratuslab.services import events
from stratuslab.services.context import UnitOfWork, notify_later

GiB = 1 << 30
MiB = 1 << 20
#: what a node's heartbeat usage says about its volume pool
POOL_FREE = "volume_free_bytes"
POOL_LIVE_SNAPSHOT = "volume_live_snapshot"
#: the pool exports to other hosts (iSCSI, or a file pool on a shared mount)
POOL_SHARED = "volume_shared"
#: the attachment index of a boot volume (``vda``; not hot-pluggable)
BOOT_INDEX = -1


class VolumeState(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    ATTACHING = "attaching"
    IN_USE = "in-use"
    DETACHING = "detaching"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    QUARANTINED = "quarantined"


class VolumeKind(StrEnum):
    DATA = "data"
    BOOTABLE = "bootable"
    VOLATILE = "volatile"
    ROOT = "root"


class AttachState(StrEnum):
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"


def settle(session: Session, vol: Volume, reason: str = "") -> None:
    """Derive the state of a made volume from its attachments."""
    states = {a.state for a in attachments_of(session, volume_id=vol.id)}
    if AttachState.ATTACHED.value in states:
        new = VolumeState.IN_USE
    elif AttachState.ATTACHING.value in states:
        new = VolumeState.ATTACHING
    elif AttachState.DETACHING.value in states:
        new = VolumeState.DETACHING
    else:
        new = VolumeState.AVAILABLE
    if vol.state == VolumeState.CREATING.value and vol.observed_generation < vol.generation:
        return  # not made yet: it becomes available (or in-use) when the node has made it
    set_state(session, vol, new, reason)


def set_state(
    session: Session, vol: Volume, state: VolumeState, reason: str = "", *, level: str = "info"
) -> None:
    if vol.state == state.value and not reason:
        return
    before = vol.state
    vol.state = state.value
    vol.status_reason = reason
    vol.updated_at = utcnow()
    if before != state.value:
        text = f"volume {vol.name}: {before} -> {state.value}" + (f": {reason}" if reason else "")
        events.record(
            session,
            f"volume.{state.value}",
            text,
            level=level,
            instance_id=vol.instance_id,
            project_id=vol.project_id,
            data={"volume_id": vol.id},
        )


def record(
    session: Session, vol: Volume, kind: str, message: str, *, instance_id: str | None = None
) -> None:
    events.record(
        session,
        kind,
        message,
        instance_id=instance_id or vol.instance_id,
        host_id=vol.host_id,
        project_id=vol.project_id,
        data={"volume_id": vol.id},
    )


def bump(vol: Volume) -> None:
    vol.generation += 1
    vol.updated_at = utcnow()


def bump_instance(uow: UnitOfWork, inst: Instance) -> None:
    inst.generation += 1
    inst.updated_at = utcnow()
    touch_host(uow, inst.host_id)


def touch_host(uow: UnitOfWork, host_id: str | None) -> None:
    if host_id is None:
        return
    host = uow.session.get(Host, host_id)
    if host is not None:
        host.bump()
    uow.notify(f"host:{host_id}")


def touch_pool(session: Session, vol: Volume, inst: Instance) -> None:
    """An attachment of ``vol`` on ``inst`` came or went: when the volume is in the pool of
    another host, that host must export it to (or withdraw it from) the instance's host."""
    if vol.host_id is None or vol.host_id == inst.host_id:
        return
    host = session.get(Host, vol.host_id)
    if host is not None:
        host.bump()
    notify_later(session, f"host:{vol.host_id}")


def attachments_of(
    session: Session, *, volume_id: str | None = None, instance_id: str | None = None
) -> list[VolumeAttachment]:
    cond = []
    if volume_id is not None:
        cond.append(VolumeAttachment.volume_id == volume_id)
    if instance_id is not None:
        cond.append(VolumeAttachment.instance_id == instance_id)
    stmt = select(VolumeAttachment).where(*cond).order_by(VolumeAttachment.index)
    return list(session.scalars(stmt))


def gib_text(size: int) -> str:
    return f"{size / GiB:.3g} GiB"
