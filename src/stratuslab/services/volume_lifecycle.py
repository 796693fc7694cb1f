"""The volume resource: reading (list, show, the wire form), creating and updating.

A user deletes a volume through services/quarantine.py; copies and growth are in
services/volume_copies.py, attachments in services/volume_attachments.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from stratuslab.db.models import Image, Instance, Operation, Volume, VolumeAttachment, utcnow
from stratuslab.drivers.base import volume_target
from stratuslab.drivers.storage.base import SECTOR
from stratuslab.errors import CapacityError, Conflict, InvalidInput
from stratuslab.identity.authz import Action, Kind, read_filter
from stratuslab.identity.quotas import Usage
from stratuslab.schemas.agent import ImageRef
from stratuslab.schemas.volumes import Attachment as AttachmentWire
from stratuslab.schemas.volumes import Volume as VolumeWire
from stratuslab.schemas.volumes import VolumeCreate
from stratuslab.services import access, quotas
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork
from stratuslab.services.images import get_image
from stratuslab.services.volume_operations import start_operation
from stratuslab.services.volume_pools import check_free, pick_pool, pool_host
from stratuslab.services.volume_states import (
    BOOT_INDEX,
    POOL_FREE,
    POOL_LIVE_SNAPSHOT,
    GiB,
    MiB,
    VolumeKind,
    VolumeState,
    gib_text,
    record,
    touch_host,
)
from stratuslab.types import DesiredState, InstanceStatus

# -- reading ------------------------------------------------------------------------------


def visible(principal: Principal) -> ColumnElement[bool]:
    flt = read_filter(principal, Kind.VOLUME)
    return and_(
        Volume.state != VolumeState.DELETED.value,
        access.visible_clause(flt, Volume.project_id, Volume.owner_id, Volume.visibility),
    )


def list_volumes(
    session: Session, principal: Principal, *, include_quarantined: bool = False
) -> list[Volume]:
    cond = [visible(principal)]
    if not include_quarantined:
        cond.append(Volume.state != VolumeState.QUARANTINED.value)
    return list(session.scalars(select(Volume).where(*cond).order_by(Volume.created_at)))


_VOLUMES = access.Lookup(
    Kind.VOLUME,
    Volume,
    lambda vol: access.Owner(vol.project_id, access.visibility_of(vol.visibility), vol.owner_id),
    "volume list",
    by_id=lambda ref: and_(Volume.id == ref, Volume.state != VolumeState.DELETED.value),
    name=Volume.name,
    visible=lambda principal: (Volume.state != VolumeState.QUARANTINED.value, visible(principal)),
    project=Volume.project_id,
    created=Volume.created_at,
)


def get_volume(
    session: Session, principal: Principal, ref: str, *, action: Action = Action.READ
) -> Volume:
    """A volume by id or name (the acting project's first); NotFound when hidden."""
    return access.find(_VOLUMES, session, principal, ref, action)


def to_wire(session: Session, vols: Iterable[Volume]) -> list[VolumeWire]:
    vols = list(vols)
    ids = [v.id for v in vols]
    rows = (
        session.execute(
            select(VolumeAttachment, Instance.name)
            .join(Instance, Instance.id == VolumeAttachment.instance_id)
            .where(VolumeAttachment.volume_id.in_(ids))
            .order_by(VolumeAttachment.created_at)
        ).all()
        if ids
        else []
    )
    out = [VolumeWire.model_validate(v) for v in vols]
    by_id = {w.id: w for w in out}
    for att, name in rows:
        by_id[att.volume_id].attachments.append(
            AttachmentWire(
                instance_id=att.instance_id,
                instance_name=name,
                index=att.index,
                target="vda" if att.index == BOOT_INDEX else volume_target(att.index),
                readonly=att.readonly,
                state=att.state,
            )
        )
    return out


# -- creating -----------------------------------------------------------------------------


def size_from(size_gib: float | None, size_bytes: int | None, *, default: int = 0) -> int:
    """The requested size in bytes; zero, negative or not whole sectors is InvalidInput."""
    if size_gib is not None and size_bytes is not None:
        raise InvalidInput("give the size in GiB or in bytes, not both", hint="drop one")
    if size_gib is not None:
        if not math.isfinite(size_gib) or size_gib <= 0:
            raise InvalidInput(
                f"volume size {size_gib:g} GiB is not positive",
                hint="give a size above zero, e.g. --size 1",
                code="invalid_size",
            )
        size_bytes = math.ceil(size_gib * GiB / MiB) * MiB  # whole MiB
    if size_bytes is None:
        size_bytes = default
    if size_bytes <= 0 or size_bytes % SECTOR:
        raise InvalidInput(
            f"volume size {size_bytes} bytes is not a positive multiple of {SECTOR}",
            hint="give a size above zero, in GiB or in whole sectors",
            code="invalid_size",
        )
    return size_bytes


def check_quota(session: Session, principal: Principal, *, count: int, size_bytes: int) -> None:
    """THE quota call for volumes (creates, clones, snapshots, volatile disks)."""
    request = Usage(volumes=count, volume_gib=math.ceil(size_bytes / GiB) * count)
    quotas.check_create(session, principal, request)


def create_volume(
    uow: UnitOfWork, principal: Principal, req: VolumeCreate
) -> tuple[Volume, Operation]:
    s = uow.session
    access.authorize_create(principal, Kind.VOLUME)
    if req.instance is not None:
        return save_root_disk(uow, principal, req)
    image: Image | None = None
    minimum = 0
    if req.image is not None:
        image = get_image(s, principal, req.image, action=Action.USE)
        minimum = _round_mib(max(image.virtual_size_bytes, image.size_bytes))
    size = size_from(req.size_gib, req.size_bytes, default=minimum)
    if size < minimum:
        raise InvalidInput(
            f"image {image.name if image else ''} needs {minimum} bytes; {size} is too small",
            hint=f"give at least {math.ceil(minimum / GiB)} GiB, or leave the size out",
            code="invalid_size",
        )
    host = pick_pool(s, size)
    check_quota(s, principal, count=1, size_bytes=size)
    vol = Volume(
        name=req.name,
        size_bytes=size,
        kind=(VolumeKind.BOOTABLE if image else VolumeKind.DATA).value,
        visibility=req.visibility,
        state=VolumeState.CREATING.value,
        image_id=image.id if image else None,
        host_id=host.id,
        source={"image": _image_ref(image)} if image else {},
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    s.add(vol)
    s.flush()
    what = f"from image {image.name}" if image else "blank"
    record(
        s, vol, "volume.creating", f"volume {vol.name} ({gib_text(size)}, {what}) on {host.name}"
    )
    touch_host(uow, vol.host_id)
    return vol, start_operation(s, principal, vol, "volume.create", state="available")


def save_root_disk(
    uow: UnitOfWork, principal: Principal, req: VolumeCreate
) -> tuple[Volume, Operation]:
    """A bootable volume holding the root disk of a stopped instance, made by the agent of
    the instance's host in its own pool (a copy of the overlay and its base, flattened).

    An instance booted from a volume has that volume as its root disk: the new volume is
    then a clone of it.
    """
    s = uow.session
    assert req.instance is not None
    if req.image is not None:
        raise InvalidInput(
            "give --image or --from-instance, not both", hint="a volume has one source"
        )
    inst = access.find_instance(s, principal, req.instance, Action.UPDATE)
    if inst.status != InstanceStatus.STOPPED.value or inst.desired != DesiredState.STOPPED.value:
        raise Conflict(
            f"instance {inst.name} is {inst.status}; only a stopped instance's root disk can "
            "be saved",
            hint=f"stop it first: `stratus stop {inst.name}`",
            code="not_stopped",
        )
    host = pool_host(s, inst.host_id)
    if POOL_FREE not in (host.usage or {}):
        raise CapacityError(
            f"host {host.name} of instance {inst.name} offers no volume storage",
            hint="save it as an image instead (`stratus image save`)",
            code="no_volume_pool",
        )
    boot_volume = inst.spec.get("boot_volume")
    image = s.get(Image, inst.image_id)
    if boot_volume:
        src = s.get(Volume, boot_volume)
        size = src.size_bytes if src is not None else 0
        if not host.usage.get(POOL_LIVE_SNAPSHOT):
            raise Conflict(
                f"instance {inst.name} boots from a volume, and the pool on {host.name} cannot "
                "copy an attached volume atomically",
                hint="clone the boot volume once the instance is deleted, or use a store with "
                "reflinks (XFS, btrfs)",
                code="volume_in_use",
            )
        source: dict[str, Any] = {"clone_of": boot_volume}
    else:
        size = _round_mib(max(image.virtual_size_bytes, image.size_bytes)) if image else 0
        source = {"root_of": inst.id}
    size = size or max(inst.disk_gib, 1) * GiB
    check_free(s, host, size)
    check_quota(s, principal, count=1, size_bytes=size)
    vol = Volume(
        name=req.name,
        size_bytes=size,
        kind=VolumeKind.BOOTABLE.value,
        visibility=req.visibility,
        state=VolumeState.CREATING.value,
        parent_id=boot_volume or None,
        image_id=inst.image_id,
        host_id=host.id,
        source=source,
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    s.add(vol)
    s.flush()
    record(
        s,
        vol,
        "volume.creating",
        f"volume {vol.name} ({gib_text(size)}): the root disk of instance {inst.name} on "
        f"{host.name}",
        instance_id=inst.id,
    )
    touch_host(uow, vol.host_id)
    return vol, start_operation(s, principal, vol, "volume.create", state="available")


def update(
    session: Session, principal: Principal, ref: str, *, name: str | None, visibility: str | None
) -> Volume:
    vol = get_volume(session, principal, ref, action=Action.UPDATE)
    changes = []
    if name is not None and name != vol.name:
        changes.append(f"name {vol.name} -> {name}")
        vol.name = name
    if visibility is not None and visibility != vol.visibility:
        changes.append(f"visibility {vol.visibility} -> {visibility}")
        vol.visibility = visibility
    if changes:
        vol.updated_at = utcnow()
        record(session, vol, "volume.updated", f"volume {vol.name}: {', '.join(changes)}")
    return vol


def _image_ref(image: Image) -> dict[str, Any]:
    return ImageRef(
        id=image.id, sha256=image.sha256, format=image.format, size_bytes=image.size_bytes
    ).model_dump(mode="json")


def _round_mib(size: int) -> int:
    return math.ceil(size / MiB) * MiB
