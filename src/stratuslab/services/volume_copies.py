"""Copies of a volume in its own pool (snapshots, read-only; clones, writable) and growing a
volume."""

from __future__ import annotations

from stratuslab.db.models import Operation, Volume
from stratuslab.errors import Conflict, InvalidInput
from stratuslab.identity.authz import Action, Kind
from stratuslab.services import access
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork
from stratuslab.services.volume_lifecycle import check_quota, get_volume
from stratuslab.services.volume_operations import start_operation
from stratuslab.services.volume_pools import check_free, pool_host
from stratuslab.services.volume_states import (
    POOL_LIVE_SNAPSHOT,
    VolumeKind,
    VolumeState,
    bump,
    gib_text,
    record,
    touch_host,
)


def copy_volume(
    uow: UnitOfWork, principal: Principal, ref: str, name: str, *, snapshot: bool
) -> tuple[Volume, Operation]:
    """A snapshot (read-only, point in time) or a clone (writable) in the same pool."""
    s = uow.session
    src = get_volume(s, principal, ref, action=Action.USE)
    access.authorize_create(principal, Kind.VOLUME)
    verb = "snapshot" if snapshot else "clone"
    if src.state not in (VolumeState.AVAILABLE.value, VolumeState.IN_USE.value):
        raise Conflict(
            f"volume {src.name} is {src.state}; only an available or in-use volume can be "
            f"{'snapshotted' if snapshot else 'cloned'}",
            hint="wait for it to settle (`stratus volume show`)",
            code="volume_busy",
        )
    if src.kind == VolumeKind.VOLATILE.value:
        raise Conflict(f"volume {src.name} is a volatile disk", hint="copy a persistent volume")
    host = pool_host(s, src.host_id)
    if src.state == VolumeState.IN_USE.value and not host.usage.get(POOL_LIVE_SNAPSHOT):
        raise Conflict(
            f"volume {src.name} is attached and its pool cannot copy it atomically",
            hint="detach it first, or use a store with reflinks (XFS, btrfs)",
            code="volume_in_use",
        )
    check_free(s, host, src.size_bytes)
    check_quota(s, principal, count=1, size_bytes=src.size_bytes)
    vol = Volume(
        name=name,
        size_bytes=src.size_bytes,
        kind=src.kind if src.kind != VolumeKind.ROOT.value else VolumeKind.BOOTABLE.value,
        visibility="private",
        state=VolumeState.CREATING.value,
        readonly=snapshot,
        parent_id=src.id,
        image_id=src.image_id,
        host_id=src.host_id,
        source={"snapshot_of" if snapshot else "clone_of": src.id},
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    s.add(vol)
    s.flush()
    record(s, vol, f"volume.{verb}", f"volume {vol.name}: {verb} of {src.name}")
    touch_host(uow, vol.host_id)
    return vol, start_operation(s, principal, vol, f"volume.{verb}", state="available")


def grow(uow: UnitOfWork, principal: Principal, ref: str, size_bytes: int) -> Operation:
    s = uow.session
    vol = get_volume(s, principal, ref, action=Action.UPDATE)
    if vol.state != VolumeState.AVAILABLE.value or vol.readonly:
        raise Conflict(
            f"volume {vol.name} is {'a read-only snapshot' if vol.readonly else vol.state}; "
            "only an available (detached) writable volume can grow",
            hint="detach it first" if not vol.readonly else "grow a clone of it",
            code="volume_busy",
        )
    if size_bytes <= vol.size_bytes:
        raise InvalidInput(
            f"volume {vol.name} has {vol.size_bytes} bytes; {size_bytes} is not larger",
            hint="volumes only grow; give a larger size",
            code="invalid_size",
        )
    check_free(s, pool_host(s, vol.host_id), size_bytes - vol.size_bytes)
    check_quota(s, principal, count=0, size_bytes=size_bytes - vol.size_bytes)
    before = vol.size_bytes
    vol.size_bytes = size_bytes
    bump(vol)
    record(
        s, vol, "volume.grow", f"volume {vol.name}: {gib_text(before)} -> {gib_text(size_bytes)}"
    )
    touch_host(uow, vol.host_id)
    return start_operation(s, principal, vol, "volume.grow", generation=vol.generation)
