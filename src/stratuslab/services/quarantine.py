"""Quarantine: deleted data is kept for a while before it is wiped, for forensics.

A deleted volume, the volatile disks of a deleted instance and the root disk of a deleted
instance (kind ``root``) all become volumes in state ``quarantined``. Their data stays in
the pool until ``quarantine_until`` (set on the next housekeeping pass to the entry time plus
``volume_quarantine`` seconds); then they are purged: state ``deleting``, the node wipes
them, state ``deleted``. Cloud admins list them, release them (the volume comes back,
``available``; a root disk as a ``bootable`` volume) or purge them at once.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Instance, Operation, Volume, utcnow
from stratuslab.errors import Conflict, NotFound
from stratuslab.identity.authz import Action
from stratuslab.services import volumes
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork
from stratuslab.services.volumes import VolumeKind, VolumeState
from stratuslab.types import InstanceStatus


def enter(session: Session, vol: Volume, reason: str) -> None:
    """Put ``vol`` in quarantine now (the housekeeping pass sets when it ends)."""
    vol.quarantined_from = vol.state
    vol.quarantine_until = None
    volumes.set_state(session, vol, VolumeState.QUARANTINED, reason)


def delete_volume(uow: UnitOfWork, principal: Principal, ref: str) -> Volume:
    """The user deletes a volume: refused while attached; otherwise into quarantine."""
    s = uow.session
    vol = volumes.get_volume(s, principal, ref, action=Action.DELETE)
    if vol.kind == VolumeKind.VOLATILE.value:
        raise Conflict(
            f"volume {vol.name} is a volatile disk of an instance",
            hint="it is deleted with its instance",
            code="volume_not_deletable",
        )
    if vol.state in (VolumeState.ATTACHING.value, VolumeState.IN_USE.value,
                     VolumeState.DETACHING.value):  # fmt: skip
        raise Conflict(
            f"volume {vol.name} is {vol.state}",
            hint=f"detach it first (`stratus volume detach {vol.name}`)",
            code="volume_in_use",
        )
    if vol.state == VolumeState.CREATING.value:
        raise Conflict(
            f"volume {vol.name} is still being made",
            hint="wait until it is available, then delete it",
            code="volume_busy",
        )
    enter(s, vol, f"deleted by {principal.user_id}")
    return vol


def list_quarantined(session: Session, principal: Principal) -> list[Volume]:
    principal.require_admin("listing the quarantine")
    stmt = (
        select(Volume)
        .where(Volume.state == VolumeState.QUARANTINED.value)
        .order_by(Volume.updated_at)
    )
    return list(session.scalars(stmt))


def release(uow: UnitOfWork, principal: Principal, volume_id: str) -> Volume:
    """Give a quarantined volume back to its owner (a root disk becomes bootable)."""
    principal.require_admin("releasing a volume from quarantine")
    vol = _quarantined(uow.session, volume_id)
    if vol.kind in (VolumeKind.ROOT.value, VolumeKind.VOLATILE.value):
        vol.kind = (
            VolumeKind.BOOTABLE if vol.kind == VolumeKind.ROOT.value else VolumeKind.DATA
        ).value
        vol.instance_id = None
    vol.quarantine_until = None
    if vol.quarantined_from == VolumeState.CREATING.value and vol.observed_generation < (
        vol.generation
    ):
        volumes.set_state(uow.session, vol, VolumeState.CREATING, "released from quarantine")
    else:
        volumes.set_state(uow.session, vol, VolumeState.AVAILABLE, "released from quarantine")
    return vol


def purge(uow: UnitOfWork, principal: Principal, volume_id: str) -> Operation:
    """Wipe a quarantined volume now."""
    principal.require_admin("purging a volume")
    vol = _quarantined(uow.session, volume_id)
    _purge(uow, vol, "purged by an admin")
    return volumes.start_operation(uow.session, principal, vol, "volume.purge", state="deleted")


def expire(uow: UnitOfWork, period: float) -> int:
    """Housekeeping: date new entries, purge the expired ones; returns how many."""
    s = uow.session
    now = utcnow()
    purged = 0
    for vol in s.scalars(select(Volume).where(Volume.state == VolumeState.QUARANTINED.value)):
        if vol.quarantine_until is None:
            vol.quarantine_until = vol.updated_at + timedelta(seconds=period)
        if vol.quarantine_until <= now:
            _purge(uow, vol, f"quarantine of {period:g} s over")
            purged += 1
    return purged


def keep_root_disk(uow: UnitOfWork, inst: Instance) -> Volume | None:
    """When an instance is deleted on a host with a volume pool, its root disk is copied
    into the pool (by the agent, before it removes the instance's files) and quarantined."""
    s = uow.session
    if inst.host_id is None or inst.spec.get("boot_volume"):
        return None  # never placed, or its root disk is a volume that stays
    if inst.status in (InstanceStatus.DELETED.value, InstanceStatus.FAILED.value):
        return None  # nothing on the node (a failed provisioning is cleaned up)
    host = s.get(Host, inst.host_id)
    if host is None or volumes.POOL_FREE not in (host.usage or {}):
        return None
    vol = Volume(
        name=f"{inst.name}-root"[:64],
        size_bytes=max(inst.disk_gib, 1) * volumes.GiB,
        kind=VolumeKind.ROOT.value,
        state=VolumeState.CREATING.value,
        image_id=inst.image_id,
        instance_id=inst.id,
        host_id=inst.host_id,
        source={"instance_root": inst.id},
        owner_id=inst.owner_id,
        project_id=inst.project_id,
    )
    s.add(vol)
    s.flush()
    volumes.record(s, vol, "volume.creating", f"keeping the root disk of {inst.name}")
    return vol


def _quarantined(session: Session, volume_id: str) -> Volume:
    vol = session.get(Volume, volume_id)
    if vol is None or vol.state != VolumeState.QUARANTINED.value:
        raise NotFound(
            f"no volume {volume_id!r} is in quarantine",
            hint="list them with `stratus volume quarantine list`",
            code="volume_not_found",
        )
    return vol


def _purge(uow: UnitOfWork, vol: Volume, reason: str) -> None:
    volumes.bump(vol)
    if vol.host_id is None:
        volumes.set_state(uow.session, vol, VolumeState.DELETED, reason)
        vol.deleted_at = utcnow()
        return
    volumes.set_state(uow.session, vol, VolumeState.DELETING, reason)
    volumes.touch_host(uow, vol.host_id)
