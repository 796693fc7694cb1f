"""Volume attachments: hot-plugging into and unplugging from a running instance, the volumes,
boot volume and volatile disks given to a new instance, and the release of a deleted
instance's volumes.

An attachment has an index (``vdc`` + index; ``BOOT_INDEX`` is the boot disk ``vda``) and a
state (``attaching``, ``attached``, ``detaching``); the node reports when it is done.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Instance, Operation, Volume, VolumeAttachment
from stratuslab.drivers.base import MAX_VOLUMES, volume_target
from stratuslab.errors import CapacityError, Conflict, InvalidInput
from stratuslab.identity.authz import Action
from stratuslab.services import access
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork
from stratuslab.services.volume_lifecycle import check_quota, get_volume, size_from
from stratuslab.services.volume_operations import start_operation
from stratuslab.services.volume_pools import check_free, pool_host, pool_shared
from stratuslab.services.volume_states import (
    BOOT_INDEX,
    POOL_FREE,
    AttachState,
    VolumeKind,
    VolumeState,
    attachments_of,
    bump_instance,
    gib_text,
    record,
    settle,
    touch_host,
    touch_pool,
)
from stratuslab.types import DesiredState, InstanceStatus


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
    if vol.host_id != inst.host_id:
        touch_host(uow, vol.host_id)  # that pool exports it to the instance's host first
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
    current = attachments_of(session, volume_id=vol.id)
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
    if vol.host_id != _where(inst) and not pool_shared(session, vol.host_id):
        raise Conflict(
            f"volume {vol.name} is in the local volume pool of another host than instance "
            f"{inst.name}",
            hint="attach it to an instance on the volume's host; volumes in iSCSI pools (or "
            "file pools on a shared mount) attach anywhere",
            code="wrong_host",
        )
    att = record_attachment(session, vol, inst)
    touch_pool(session, vol, inst)
    return att


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
    current = attachments_of(s, volume_id=vol.id)
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
        touch_pool(s, vol, inst)
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
        host = pool_host(s, inst.host_id)
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
            f"volatile disk {vol.name} ({gib_text(size)})",
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
    if vol.host_id != _where(inst) and not pool_shared(session, vol.host_id):
        raise Conflict(
            f"volume {vol.name} is in the local volume pool of another host than the one "
            f"chosen for {inst.name}",
            hint="boot from it on the volume's host; volumes in iSCSI pools (or file pools "
            "on a shared mount) boot anywhere",
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
    touch_pool(session, vol, inst)  # another host's pool exports it to the instance's host


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


def release(session: Session, vol: Volume, att: VolumeAttachment, inst: Instance) -> None:
    """The instance is gone: drop the attachment; volatile disks go to quarantine."""
    session.delete(att)
    session.flush()
    touch_pool(session, vol, inst)
    if vol.kind == VolumeKind.VOLATILE.value:
        from stratuslab.services import quarantine  # a cycle, as in volume_agent

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
    for att in attachments_of(uow.session, instance_id=inst.id):
        vol = uow.session.get(Volume, att.volume_id)
        assert vol is not None
        release(uow.session, vol, att, inst)
        if vol.state != VolumeState.QUARANTINED.value:
            settle(uow.session, vol)


def _instance_names(session: Session, atts: list[VolumeAttachment]) -> str:
    ids = [a.instance_id for a in atts]
    names = session.scalars(select(Instance.name).where(Instance.id.in_(ids)))
    return ", ".join(sorted(names))


def _where(inst: Instance) -> str | None:
    """The instance's host; for one still pending, the host its volumes pin it to."""
    return inst.host_id or inst.spec.get("pinned_host")
