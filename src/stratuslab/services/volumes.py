"""Persistent volumes: the resource, its attachments, and the node side's desired state.

A volume lives in the *volume pool* of one host: the node agent of that host holds a volume
backend (``file``, ``iscsi`` or ``fake``) and converges it to the list of volumes this module
puts in the host's desired state (docs/adr/0003-volumes.md). The controller decides (checks,
quota, the pool with room, attachment indexes), the node does the work and reports; every
change is an event, and every change that needs the node returns an operation.

States: ``creating -> available <-> attaching -> in-use -> detaching -> available``;
``deleting -> deleted``; ``error``; ``quarantined`` (services/quarantine.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from stratuslab.db.models import (
    Host,
    Image,
    Instance,
    Operation,
    Volume,
    VolumeAttachment,
    utcnow,
)
from stratuslab.drivers.base import MAX_VOLUMES, volume_target
from stratuslab.drivers.storage.base import SECTOR
from stratuslab.errors import CapacityError, Conflict, InvalidInput, NotFound
from stratuslab.identity.authz import Action, Kind, Visibility, authorize, read_filter
from stratuslab.identity.quotas import Usage
from stratuslab.schemas.agent import (
    DesiredAttachment,
    DesiredVolume,
    ImageRef,
    ObservedInstance,
    ObservedVolume,
    Report,
)
from stratuslab.schemas.volumes import Attachment as AttachmentWire
from stratuslab.schemas.volumes import Volume as VolumeWire
from stratuslab.schemas.volumes import VolumeCreate
from stratuslab.services import access, events, quotas
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork
from stratuslab.services.images import get_image
from stratuslab.types import DesiredState, HostState, InstanceStatus, OperationStatus

GiB = 1 << 30
MiB = 1 << 20
#: what a node's heartbeat usage says about its volume pool
POOL_FREE = "volume_free_bytes"
POOL_LIVE_SNAPSHOT = "volume_live_snapshot"
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


def get_volume(
    session: Session, principal: Principal, ref: str, *, action: Action = Action.READ
) -> Volume:
    """A volume by id or name (the acting project's first); NotFound when hidden."""
    vol = session.scalar(
        select(Volume).where(Volume.id == ref, Volume.state != VolumeState.DELETED.value)
    )
    if vol is None:
        vol = session.scalar(
            select(Volume)
            .where(
                Volume.name == ref,
                Volume.state != VolumeState.QUARANTINED.value,
                visible(principal),
            )
            .order_by(Volume.project_id != principal.project_id, Volume.created_at)
            .limit(1)
        )
    if vol is None:
        raise _missing(ref)
    authorize(
        principal,
        action,
        kind=Kind.VOLUME,
        resource_owner_project=vol.project_id,
        resource_visibility=_visibility(vol.visibility),
        resource_owner_user=vol.owner_id,
        ref=ref,
    )
    return vol


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
    record(s, vol, "volume.creating", f"volume {vol.name} ({_gib(size)}, {what}) on {host.name}")
    touch_host(uow, vol.host_id)
    return vol, start_operation(s, principal, vol, "volume.create", state="available")


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
    host = _host(s, src.host_id)
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
    check_free(s, _host(s, vol.host_id), size_bytes - vol.size_bytes)
    check_quota(s, principal, count=0, size_bytes=size_bytes - vol.size_bytes)
    before = vol.size_bytes
    vol.size_bytes = size_bytes
    bump(vol)
    record(s, vol, "volume.grow", f"volume {vol.name}: {_gib(before)} -> {_gib(size_bytes)}")
    touch_host(uow, vol.host_id)
    return start_operation(s, principal, vol, "volume.grow", generation=vol.generation)


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


# -- pools --------------------------------------------------------------------------------


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
            f"{_gib(size_bytes)} does not fit: the volume pool on {host.name} has "
            f"{_gib(max(free, 0))} free",
            hint="make it smaller, or delete (and purge) volumes you do not need",
            code="volume_too_large",
        )


# -- attaching ----------------------------------------------------------------------------


def attach(uow: UnitOfWork, principal: Principal, ref: str, instance_ref: str) -> Operation:
    """Hot-plug a volume into a running instance of the same host."""
    s = uow.session
    vol = get_volume(s, principal, ref, action=Action.USE)
    inst = access.find_instance(s, principal, instance_ref, Action.UPDATE)
    if inst.status != InstanceStatus.RUNNING.value or inst.desired != DesiredState.RUNNING.value:
        raise Conflict(
            f"instance {inst.name} is {inst.status}; volumes are hot-plugged into running "
            "instances only",
            hint=f"start it first (`stratus start {inst.name}`)",
            code="not_running",
        )
    att = add_attachment(s, vol, inst)
    bump_instance(uow, inst)
    record(
        s,
        vol,
        "volume.attaching",
        f"attaching {vol.name} to {inst.name} as {volume_target(att.index)}",
        instance_id=inst.id,
    )
    return start_operation(s, principal, vol, "volume.attach", attached=inst.id)


def add_attachment(session: Session, vol: Volume, inst: Instance) -> VolumeAttachment:
    """Check that ``vol`` may go on ``inst`` and record the attachment (``attaching``)."""
    if vol.kind in (VolumeKind.VOLATILE.value, VolumeKind.ROOT.value) and vol.instance_id:
        raise Conflict(
            f"volume {vol.name} is a {vol.kind} disk of an instance",
            hint="attach a data or bootable volume",
            code="volume_not_attachable",
        )
    current = _attachments(session, volume_id=vol.id)
    if any(a.instance_id == inst.id for a in current):
        raise Conflict(
            f"volume {vol.name} is already attached to {inst.name}",
            hint="nothing to do",
            code="already_attached",
        )
    shared = vol.readonly and vol.state == VolumeState.IN_USE.value
    if vol.state != VolumeState.AVAILABLE.value and not shared:
        raise Conflict(
            f"volume {vol.name} is {vol.state}"
            + (f" (attached to {_instance_names(session, current)})" if current else ""),
            hint="a writable volume is attached to one instance at a time; detach it first"
            if current
            else "wait until it is available",
            code="volume_in_use" if current else "volume_busy",
        )
    if vol.host_id != inst.host_id:
        raise Conflict(
            f"volume {vol.name} is in the pool of another host than instance {inst.name}",
            hint="attach it to an instance on the volume's host (shared pools: see docs)",
            code="wrong_host",
        )
    return record_attachment(session, vol, inst)


def record_attachment(session: Session, vol: Volume, inst: Instance) -> VolumeAttachment:
    """The attachment row (``attaching``) at the instance's lowest free index."""
    att = VolumeAttachment(
        volume_id=vol.id,
        instance_id=inst.id,
        index=free_index(session, inst.id),
        readonly=vol.readonly,
        state=AttachState.ATTACHING.value,
    )
    session.add(att)
    session.flush()
    settle(session, vol)
    return att


def free_index(session: Session, instance_id: str) -> int:
    used = set(
        session.scalars(
            select(VolumeAttachment.index).where(VolumeAttachment.instance_id == instance_id)
        )
    )
    for index in range(MAX_VOLUMES):
        if index not in used:
            return index
    raise Conflict(
        f"the instance has {MAX_VOLUMES} volumes already",
        hint="detach one first",
        code="too_many_volumes",
    )


def detach(uow: UnitOfWork, principal: Principal, ref: str, instance_ref: str | None) -> Operation:
    s = uow.session
    vol = get_volume(s, principal, ref, action=Action.USE)
    current = _attachments(s, volume_id=vol.id)
    if instance_ref is not None:
        inst = access.find_instance(s, principal, instance_ref, Action.UPDATE)
        current = [a for a in current if a.instance_id == inst.id]
    if not current:
        raise Conflict(
            f"volume {vol.name} is not attached" + (f" to {instance_ref}" if instance_ref else ""),
            hint="nothing to do",
            code="not_attached",
        )
    if len(current) > 1:
        raise InvalidInput(
            f"volume {vol.name} is attached to {_instance_names(s, current)}",
            hint="say which instance with --instance",
        )
    att = current[0]
    inst = access.find_instance(s, principal, att.instance_id, Action.UPDATE)
    if vol.kind == VolumeKind.VOLATILE.value or inst.spec.get("boot_volume") == vol.id:
        raise Conflict(
            f"volume {vol.name} is a boot or volatile disk of instance {inst.name}",
            hint="it goes with the instance; delete the instance instead",
            code="boot_disk",
        )
    if att.state == AttachState.DETACHING.value:
        return start_operation(s, principal, vol, "volume.detach", detached=inst.id)
    att.state = AttachState.DETACHING.value
    if inst.host_id is None or inst.status in (InstanceStatus.PENDING.value,):
        s.delete(att)
        s.flush()
    settle(s, vol)
    bump_instance(uow, inst)
    record(
        s, vol, "volume.detaching", f"detaching {vol.name} from {inst.name}", instance_id=inst.id
    )
    return start_operation(s, principal, vol, "volume.detach", detached=inst.id)


def attach_at_create(
    uow: UnitOfWork,
    principal: Principal,
    inst: Instance,
    volume_refs: list[str],
    volatile_gib: list[int],
    boot_volume: str | None = None,
) -> None:
    """Record the volumes (and make the volatile disks) of a new instance.

    Called by services/instances.create_instances once the instance is placed, in its
    transaction: any refusal undoes the whole create.
    """
    s = uow.session
    if boot_volume is not None:
        _boot_from(s, principal, inst, boot_volume)
    for ref in volume_refs:
        vol = get_volume(s, principal, ref, action=Action.USE)
        add_attachment(s, vol, inst)
    if volatile_gib and inst.host_id is None:
        raise CapacityError(
            f"instance {inst.name} has no host yet, so its volatile disks have no pool",
            hint="retry when a host has room",
            code="no_host",
        )
    for number, gib in enumerate(volatile_gib, start=1):
        size = size_from(float(gib), None)
        host = _host(s, inst.host_id)
        if POOL_FREE not in (host.usage or {}):
            raise CapacityError(
                f"host {host.name} offers no volume storage for volatile disks",
                hint="configure a volume backend on the node",
                code="no_volume_pool",
            )
        check_free(s, host, size)
        check_quota(s, principal, count=1, size_bytes=size)
        vol = Volume(
            name=f"{inst.name}-volatile-{number}",
            size_bytes=size,
            kind=VolumeKind.VOLATILE.value,
            state=VolumeState.CREATING.value,
            instance_id=inst.id,
            host_id=inst.host_id,
            owner_id=principal.user_id,
            project_id=principal.project_id,
        )
        s.add(vol)
        s.flush()
        record_attachment(s, vol, inst)
        record(
            s,
            vol,
            "volume.creating",
            f"volatile disk {vol.name} ({_gib(size)})",
            instance_id=inst.id,
        )


def _boot_from(session: Session, principal: Principal, inst: Instance, ref: str) -> None:
    vol = get_volume(session, principal, ref, action=Action.UPDATE)
    if vol.kind != VolumeKind.BOOTABLE.value or vol.readonly:
        raise Conflict(
            f"volume {vol.name} is not a writable bootable volume",
            hint="make one with `stratus volume create NAME --image IMAGE`, or clone a snapshot",
            code="not_bootable",
        )
    if vol.state != VolumeState.AVAILABLE.value:
        raise Conflict(
            f"volume {vol.name} is {vol.state}", hint="detach it first", code="volume_in_use"
        )
    if vol.host_id != inst.host_id:
        raise Conflict(
            f"volume {vol.name} is in the pool of another host than the one chosen for {inst.name}",
            hint="a volume pool is local to its host in this version",
            code="wrong_host",
        )
    session.add(
        VolumeAttachment(
            volume_id=vol.id,
            instance_id=inst.id,
            index=BOOT_INDEX,
            readonly=False,
            state=AttachState.ATTACHED.value,
        )
    )
    session.flush()
    inst.spec = {**inst.spec, "boot_volume": vol.id}
    settle(session, vol, f"boot disk of {inst.name}")


def check_create_request(volume_refs: list[str], volatile_gib: list[int], count: int) -> None:
    """Refusals that need no database (before anything is made)."""
    if volume_refs and count > 1:
        raise InvalidInput(
            "a volume can be given to one instance at a time, not to --count instances",
            hint="run one instance per volume",
        )
    if len(volume_refs) != len(set(volume_refs)):
        raise InvalidInput("the same volume is given twice", hint="give each volume once")
    for gib in volatile_gib:
        size_from(float(gib), None)
    if len(volume_refs) + len(volatile_gib) > MAX_VOLUMES:
        raise InvalidInput(f"at most {MAX_VOLUMES} volumes per instance", hint="give fewer")


# -- the agent protocol -------------------------------------------------------------------


def desired_volumes(session: Session, host: Host) -> list[DesiredVolume]:
    """The volumes the pool of ``host`` must hold or delete."""
    rows = session.scalars(
        select(Volume)
        .where(
            Volume.host_id == host.id,
            Volume.state.not_in([VolumeState.DELETED.value, VolumeState.ERROR.value]),
        )
        .order_by(Volume.created_at)
    )
    out = []
    for vol in rows:
        image = vol.source.get("image")
        out.append(
            DesiredVolume(
                id=vol.id,
                size_bytes=vol.size_bytes,
                generation=vol.generation,
                present=vol.state != VolumeState.DELETING.value,
                readonly=vol.readonly,
                image=ImageRef.model_validate(image) if image else None,
                clone_of=vol.source.get("clone_of"),
                snapshot_of=vol.source.get("snapshot_of"),
                instance_root=vol.source.get("instance_root"),
            )
        )
    return out


def desired_attachments(
    session: Session, instance_ids: list[str]
) -> dict[str, list[DesiredAttachment]]:
    """What each instance must have attached (attaching and attached, not detaching)."""
    out: dict[str, list[DesiredAttachment]] = {}
    if not instance_ids:
        return out
    rows = session.execute(
        select(VolumeAttachment, Volume.readonly)
        .join(Volume, Volume.id == VolumeAttachment.volume_id)
        .where(
            VolumeAttachment.instance_id.in_(instance_ids),
            VolumeAttachment.state != AttachState.DETACHING.value,
            VolumeAttachment.index != BOOT_INDEX,
        )
        .order_by(VolumeAttachment.index)
    )
    for att, readonly in rows:
        out.setdefault(att.instance_id, []).append(
            DesiredAttachment(
                volume_id=att.volume_id, index=att.index, readonly=readonly, shareable=readonly
            )
        )
    return out


def apply_report(session: Session, host: Host, report: Report) -> list[str]:
    """Record what the node says of its pool and of its instances' volumes; return the
    operations that finished."""
    touched: dict[str, Volume] = {}
    failures: dict[str, dict[str, Any]] = {}
    for obs in report.volumes:
        vol = session.get(Volume, obs.id)
        if vol is not None and vol.host_id == host.id:
            error = _observe_volume(session, vol, obs)
            touched[vol.id] = vol
            if error is not None:
                failures[vol.id] = error
    for inst_obs in report.instances:
        for vol, error in _observe_instance(session, host, inst_obs):
            touched[vol.id] = vol
            if error is not None:
                failures[vol.id] = error
    return evaluate_operations(session, touched, failures)


def _observe_volume(session: Session, vol: Volume, obs: ObservedVolume) -> dict[str, Any] | None:
    if obs.observed_generation < vol.observed_generation:
        return None  # stale
    current = obs.observed_generation >= vol.generation
    if obs.error and current:
        return _volume_failed(session, vol, obs.error)
    vol.observed_generation = min(obs.observed_generation, vol.generation)
    if vol.state == VolumeState.DELETING.value and not obs.exists:
        set_state(session, vol, VolumeState.DELETED, "data wiped")
        vol.deleted_at = utcnow()
    elif vol.state == VolumeState.CREATING.value and obs.exists and current:
        if vol.kind == VolumeKind.ROOT.value:
            from stratuslab.services import quarantine  # a cycle: quarantine uses this module

            quarantine.enter(session, vol, "root disk of a deleted instance kept")
        else:
            settle(session, vol, f"{_gib(obs.size_bytes)} ready")
    return None


def _volume_failed(session: Session, vol: Volume, reason: str) -> dict[str, Any]:
    vol.observed_generation = vol.generation
    if vol.state == VolumeState.CREATING.value:
        set_state(session, vol, VolumeState.ERROR, reason, level="error")
    else:  # a grow that failed: the volume keeps its size
        vol.status_reason = reason
        events.record(
            session,
            "volume.error",
            f"volume {vol.name}: {reason}",
            level="error",
            project_id=vol.project_id,
            data={"volume_id": vol.id},
        )
    return {
        "code": "volume_failed",
        "message": f"volume {vol.name}: {reason}",
        "hint": "see `stratus events`",
        "details": {"volume_id": vol.id},
    }


def _observe_instance(
    session: Session, host: Host, obs: ObservedInstance
) -> list[tuple[Volume, dict[str, Any] | None]]:
    inst = session.get(Instance, obs.id)
    if inst is None or inst.host_id != host.id:
        return []
    changed: list[tuple[Volume, dict[str, Any] | None]] = []
    gone = obs.status == InstanceStatus.DELETED.value
    if obs.volumes is None and not gone:
        return changed
    attached = set(obs.volumes or ())
    for att in _attachments(session, instance_id=inst.id):
        vol = session.get(Volume, att.volume_id)
        assert vol is not None
        error = obs.volume_errors.get(att.volume_id)
        problem: dict[str, Any] | None = None
        if gone:
            release(session, vol, att, inst)
        elif att.state == AttachState.ATTACHING.value and att.volume_id in attached:
            att.state = AttachState.ATTACHED.value
            record(
                session,
                vol,
                "volume.attached",
                f"{vol.name} attached to {inst.name} as {volume_target(att.index)}",
                instance_id=inst.id,
            )
        elif att.state == AttachState.ATTACHING.value and error:
            session.delete(att)
            problem = _attach_failed(session, vol, inst, "attaching", error)
        elif att.state == AttachState.DETACHING.value and att.volume_id not in attached:
            session.delete(att)
            record(
                session,
                vol,
                "volume.detached",
                f"{vol.name} detached from {inst.name}",
                instance_id=inst.id,
            )
        elif att.state == AttachState.DETACHING.value and error:
            att.state = AttachState.ATTACHED.value
            problem = _attach_failed(session, vol, inst, "detaching", error)
        else:
            continue
        session.flush()
        if vol.state != VolumeState.QUARANTINED.value:
            settle(session, vol)
        changed.append((vol, problem))
    return changed


def _attach_failed(
    session: Session, vol: Volume, inst: Instance, verb: str, error: str
) -> dict[str, Any]:
    message = (
        f"{verb} {vol.name} {'to' if verb == 'attaching' else 'from'} {inst.name} failed: {error}"
    )
    events.record(
        session,
        f"volume.{verb[:6]}_failed",
        message,
        level="error",
        instance_id=inst.id,
        project_id=vol.project_id,
        data={"volume_id": vol.id},
    )
    return {
        "code": f"{verb[:6]}_failed",
        "message": message,
        "hint": "see `stratus events`",
        "details": {"volume_id": vol.id, "instance_id": inst.id},
    }


def release(session: Session, vol: Volume, att: VolumeAttachment, inst: Instance) -> None:
    """The instance is gone: drop the attachment; volatile disks go to quarantine."""
    session.delete(att)
    session.flush()
    if vol.kind == VolumeKind.VOLATILE.value:
        from stratuslab.services import quarantine

        quarantine.enter(session, vol, f"volatile disk of deleted instance {inst.name}")
    else:
        record(
            session,
            vol,
            "volume.detached",
            f"{vol.name} released: instance {inst.name} was deleted",
            instance_id=inst.id,
        )


def instance_deleted(uow: UnitOfWork, inst: Instance) -> None:
    """Called by services/instances.delete: when the instance never reached a host, its
    attachments go at once (otherwise when its host reports it deleted)."""
    if inst.status != InstanceStatus.DELETED.value:
        return
    for att in _attachments(uow.session, instance_id=inst.id):
        vol = uow.session.get(Volume, att.volume_id)
        assert vol is not None
        release(uow.session, vol, att, inst)
        if vol.state != VolumeState.QUARANTINED.value:
            settle(uow.session, vol)


# -- state, operations, events ------------------------------------------------------------


def settle(session: Session, vol: Volume, reason: str = "") -> None:
    """Derive the state of a made volume from its attachments."""
    states = {a.state for a in _attachments(session, volume_id=vol.id)}
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


def start_operation(
    session: Session, principal: Principal, vol: Volume, kind: str, **expect: Any
) -> Operation:
    """An operation on ``vol`` that succeeds when ``expect`` holds: ``state``,
    ``generation`` (reached), ``attached`` or ``detached`` (an instance id)."""
    op = Operation(
        kind=kind,
        target_type="volume",
        target_ids=[vol.id],
        expect=expect,
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    session.add(op)
    session.flush()
    evaluate_operations(session, {vol.id: vol}, {})
    return op


def evaluate_operations(
    session: Session, vols: dict[str, Volume], failures: dict[str, dict[str, Any]]
) -> list[str]:
    if not vols:
        return []
    finished = []
    for op in session.scalars(
        select(Operation).where(
            Operation.status == OperationStatus.RUNNING.value, Operation.target_type == "volume"
        )
    ):
        vol = vols.get(op.target_ids[0]) if op.target_ids else None
        if vol is None:
            continue
        error = failures.get(vol.id)
        if error is None and vol.state == VolumeState.ERROR.value:
            error = {
                "code": "volume_failed",
                "message": f"volume {vol.name}: {vol.status_reason}",
                "hint": "see `stratus events`",
            }
        if error is not None or _reached(session, vol, op.expect):
            op.status = (OperationStatus.FAILED if error else OperationStatus.SUCCEEDED).value
            op.error = error
            op.finished_at = utcnow()
            op.progress = "failed" if error else "done"
            finished.append(op.id)
        else:
            op.progress = f"volume {vol.name}: {vol.state}"
    return finished


def _reached(session: Session, vol: Volume, expect: dict[str, Any]) -> bool:
    if "state" in expect:
        return vol.state == expect["state"] or (
            expect["state"] == VolumeState.AVAILABLE.value
            and vol.state in (VolumeState.IN_USE.value, VolumeState.ATTACHING.value)
        )
    if "generation" in expect:
        return vol.observed_generation >= int(expect["generation"])
    states = {a.instance_id: a.state for a in _attachments(session, volume_id=vol.id)}
    if "attached" in expect:
        return states.get(expect["attached"]) == AttachState.ATTACHED.value
    if "detached" in expect:
        return expect["detached"] not in states
    return False


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
        host.desired_generation += 1
    uow.notify(f"host:{host_id}")


# -- internals ----------------------------------------------------------------------------


def _attachments(
    session: Session, *, volume_id: str | None = None, instance_id: str | None = None
) -> list[VolumeAttachment]:
    cond = []
    if volume_id is not None:
        cond.append(VolumeAttachment.volume_id == volume_id)
    if instance_id is not None:
        cond.append(VolumeAttachment.instance_id == instance_id)
    stmt = select(VolumeAttachment).where(*cond).order_by(VolumeAttachment.index)
    return list(session.scalars(stmt))


def _instance_names(session: Session, atts: list[VolumeAttachment]) -> str:
    ids = [a.instance_id for a in atts]
    names = session.scalars(select(Instance.name).where(Instance.id.in_(ids)))
    return ", ".join(sorted(names))


def _host(session: Session, host_id: str | None) -> Host:
    host = session.get(Host, host_id) if host_id else None
    if host is None:
        raise CapacityError("the volume's host is gone", hint="ask an admin", code="no_host")
    return host


def _image_ref(image: Image) -> dict[str, Any]:
    return ImageRef(
        id=image.id, sha256=image.sha256, format=image.format, size_bytes=image.size_bytes
    ).model_dump(mode="json")


def _round_mib(size: int) -> int:
    return math.ceil(size / MiB) * MiB


def _gib(size: int) -> str:
    return f"{size / GiB:.3g} GiB"


def _visibility(value: str) -> Visibility:
    try:
        return Visibility(value)
    except ValueError:
        return Visibility.PRIVATE


def _missing(ref: str) -> NotFound:
    return NotFound(
        f"volume {ref!r} does not exist",
        hint="list what you can see with `stratus volume list`",
        code="volume_not_found",
    )
