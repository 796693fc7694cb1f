"""Instances leaving their host: cold migration, draining, and HA after a host failure.

Everything here is level-triggered and driven by the controller's housekeeping pass
(:func:`advance`), so a controller restart in the middle of a move resumes where it was:
the state of a move is the ``migration`` column of the instance.

Cold migration (``stratus migrate``), in phases:

1. ``saving``: the instance is stopped on its host, which flattens the root disk and uploads
   it as an image (the image-save protocol of services/images.py);
2. ``moving``: once the image is in, the instance is claimed on the target host (the
   scheduler's choice, or the admin's ``--host``), boots there from that image
   (``spec.root_image_id``), and the old host, whose desired state no longer lists it,
   destroys its copy;
3. done when the instance is back in the state it had (running or stopped) on the new host.

HA: when a host has been offline for the grace period (and ``ha_delay``), its instances are
``unknown``; those with HA policy ``restart`` are put back to pending and placed elsewhere,
from their image; ``migrate`` does the same keeping their disks, which must be on shared
storage (a boot volume in an iSCSI pool). A host that comes back finds these instances gone
from its desired state and destroys its stale copies before anything else (fencing, in the
agent's pass).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Image, Instance, Operation, Volume, VolumeAttachment, utcnow
from stratuslab.errors import CapacityError, Conflict, InvalidInput
from stratuslab.services import events, networks, operations
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork, notify_later
from stratuslab.services.hosts import get_host
from stratuslab.services.images import check_name_free, new_saving_image
from stratuslab.services.placement import RELEASED, Placer, request_for
from stratuslab.services.volume_pools import pool_shared
from stratuslab.types import DesiredState, HostState, ImageStatus, InstanceStatus

#: instance statuses a cold migration may start from
MOVABLE = (InstanceStatus.RUNNING.value, InstanceStatus.STOPPED.value)


def migrate(
    uow: UnitOfWork,
    principal: Principal,
    inst: Instance,
    host_ref: str | None = None,
    *,
    live: bool = False,
) -> Operation:
    """Start a migration of ``inst`` (to ``host_ref``, or where the scheduler says): cold,
    or live when both hypervisors can reach each other."""
    s = uow.session
    principal.require_admin("migrating an instance")
    if inst.migration:
        raise Conflict(
            f"instance {inst.name} is already being migrated ({inst.migration.get('phase', '?')})",
            hint="wait for it to finish (`stratus show`)",
            code="migrating",
        )
    if live:
        return _start_live(uow, principal, inst, host_ref)
    if inst.status not in MOVABLE or inst.desired == DesiredState.DELETED.value:
        raise Conflict(
            f"instance {inst.name} is {inst.status}; only a running or stopped instance can be "
            "migrated",
            hint="wait until it is running or stopped",
            code="not_movable",
        )
    if inst.spec.get("save"):
        raise Conflict(f"instance {inst.name} is being saved", hint="wait for the save to finish")
    assert inst.host_id is not None
    target = _check_target(s, uow, inst, host_ref)
    stuck = disks_left_behind(s, inst, target)
    if stuck:
        raise Conflict(
            f"instance {inst.name} cannot move: {stuck}",
            hint="detach the volume first, or keep the instance where it is",
            code="disks_not_movable",
        )
    resume = inst.desired == DesiredState.RUNNING.value
    name = _root_name(inst)
    check_name_free(s, principal, name)
    where = _host_name(s, target) if target else "a host the scheduler picks"
    _start_cold(uow, inst, target, f"cold migration to {where}", name=name)
    return _operation(s, principal, inst, running=resume)


def _operation(s: Session, principal: Principal, inst: Instance, *, running: bool) -> Operation:
    """The operation of a migration: done when the instance is back (running or stopped) at
    the generation the move gives it (one more than now), on its new host."""
    op = operations.start(
        s,
        principal,
        kind="instance.migrate",
        instances=[inst],
        expect_status=InstanceStatus.RUNNING if running else InstanceStatus.STOPPED,
    )
    op.expect = {**op.expect, "generations": {inst.id: inst.generation + 1}}
    inst.migration = {**(inst.migration or {}), "operation": op.id}
    return op


def _check_target(s: Session, uow: UnitOfWork, inst: Instance, host_ref: str | None) -> str | None:
    placer = Placer(s, uow.ctx.settings, exclude={inst.host_id or ""})
    request = request_for(inst)
    if host_ref is None:
        result = placer.board.place(request)
        if result.host is None:
            raise CapacityError(
                f"no other host can take instance {inst.name}: {result.reason}",
                hint="free capacity or enable more hosts (`stratus host list`)",
                code="no_target_host",
            )
        return None
    host = get_host(s, host_ref)
    if host.id == inst.host_id:
        raise InvalidInput(
            f"instance {inst.name} already runs on {host.name}",
            hint="name another host, or leave out --host to let the scheduler choose",
            code="same_host",
        )
    problem = placer.why_not(request, host.id)
    if problem is not None:
        raise CapacityError(
            f"host {host.name} cannot take instance {inst.name}: {problem}",
            hint="choose another --host (`stratus host list`), or leave it out",
            code="target_host_refused",
        )
    return host.id


def disks_left_behind(s: Session, inst: Instance, target: str | None) -> str:
    """Which disks of ``inst`` (besides its root disk) could not follow it to ``target``."""
    rows = s.execute(
        select(Volume)
        .join(VolumeAttachment, VolumeAttachment.volume_id == Volume.id)
        .where(VolumeAttachment.instance_id == inst.id)
    ).scalars()
    for vol in rows:
        if vol.host_id == target:
            continue
        if vol.host_id == inst.host_id and vol.kind == "volatile":
            return f"its volatile disk {vol.name} lives on its host"
        if not pool_shared(s, vol.host_id):
            return f"volume {vol.name} is in the local pool of its host"
    return ""


def _root_name(inst: Instance) -> str:
    return f"{inst.name}-root-{utcnow():%Y%m%d%H%M%S}"


def _bump(uow: UnitOfWork, inst: Instance, *host_ids: str | None) -> None:
    _touch(uow.session, inst, *host_ids)


def _touch(session: Session, inst: Instance, *host_ids: str | None) -> None:
    """A new generation of ``inst``; the hosts' desired states change and their agents are
    woken once the transaction commits."""
    inst.generation += 1
    inst.updated_at = utcnow()
    for host_id in {h for h in host_ids if h}:
        host = session.get(Host, host_id)
        if host is not None:
            host.bump()
        notify_later(session, f"host:{host_id}")


def _record(
    session: Session,
    inst: Instance,
    kind: str,
    message: str,
    *,
    level: str = "info",
    host_id: str | None = None,
) -> None:
    """An event of ``inst`` (on its host unless ``host_id`` says otherwise)."""
    events.record(
        session,
        kind,
        message,
        level=level,
        instance_id=inst.id,
        host_id=host_id or inst.host_id,
        project_id=inst.project_id,
    )


def _host_name(s: Session, host_id: str | None) -> str:
    host = s.get(Host, host_id) if host_id else None
    return host.name if host is not None else str(host_id)


# -- the housekeeping pass -----------------------------------------------------------------


def advance(uow: UnitOfWork) -> None:
    """Move every migration, drain and HA recovery one step further."""
    s = uow.session
    for inst in s.scalars(select(Instance).where(Instance.migration.is_not(None))):
        if inst.migration:
            _advance_migration(uow, inst)
    _drain(uow)
    _recover(uow)


def _advance_migration(uow: UnitOfWork, inst: Instance) -> None:
    s = uow.session
    mig: dict[str, Any] = dict(inst.migration or {})
    if inst.desired == DesiredState.DELETED.value or inst.status in RELEASED:
        inst.migration = None
        return
    phase = mig.get("phase")
    if phase == "saving":
        image = s.get(Image, mig.get("image_id"))
        if image is None or image.status == ImageStatus.ERROR.value:
            reason = image.status_reason if image is not None else "the saved disk is gone"
            _abort(uow, inst, mig, f"saving the root disk failed: {reason}")
        elif image.status == ImageStatus.AVAILABLE.value:
            _move(uow, inst, mig)
    elif phase == "releasing":
        source = s.get(Host, mig.get("from")) if mig.get("from") else None
        if source is None or source.state == HostState.OFFLINE.value:
            _released(s, inst)  # a gone host runs nothing: its copy cannot come back unfenced
    elif phase == "migrating" and mig.get("mode") == "live":
        dest = s.get(Host, mig.get("to")) if mig.get("to") else None
        if dest is None or dest.state == HostState.OFFLINE.value:
            name = dest.name if dest is not None else "the destination"
            live_failed(s, str(mig.get("to")), inst.id, f"{name} is offline")
    elif phase == "moving":
        want = InstanceStatus.RUNNING if mig.get("resume") else InstanceStatus.STOPPED
        if inst.status == want.value and inst.observed_generation >= inst.generation:
            inst.migration = None
            _record(
                s,
                inst,
                "instance.migrated",
                f"cold migration from {_host_name(s, mig.get('from'))} to "
                f"{_host_name(s, inst.host_id)} done",
            )


def _move(uow: UnitOfWork, inst: Instance, mig: dict[str, Any]) -> None:
    s = uow.session
    source = mig.get("from")
    placer = Placer(s, uow.ctx.settings, exclude={source or ""})
    request = request_for(inst)
    old = inst.host_id
    problem: str | None
    if mig.get("to"):
        problem = placer.claim_on(inst, request, str(mig["to"]))
    else:
        problem = None if placer.claim(inst, request) else inst.status_reason
    if problem is not None:
        inst.host_id = old
        started = mig.get("started")
        waited = (
            (utcnow() - datetime.fromisoformat(started)).total_seconds()
            if isinstance(started, str)
            else 0.0
        )
        if waited > uow.ctx.settings.pending_timeout:
            _abort(uow, inst, mig, f"no host could take it: {problem}")
        else:
            inst.status_reason = f"migration waiting for a host: {problem}"
        return
    networks.instance_moved(uow, inst, old)
    networks.instance_placed(uow, inst)
    inst.spec = {**inst.spec, "root_image_id": mig["image_id"]}
    inst.desired = (DesiredState.RUNNING if mig.get("resume") else DesiredState.STOPPED).value
    inst.status = InstanceStatus.SCHEDULED.value
    # the new host starts it only once the old one has destroyed its copy (it reports that)
    inst.migration = {**mig, "phase": "releasing", "to": inst.host_id}
    _bump(uow, inst, old, inst.host_id)
    _record(
        s,
        inst,
        "instance.moving",
        f"root disk saved; moving from {_host_name(s, old)} to {_host_name(s, inst.host_id)}",
    )


def held_back(inst: Instance) -> bool:
    """Is ``inst`` kept from its new host until its old host has let it go?"""
    return bool(inst.migration) and (inst.migration or {}).get("phase") == "releasing"


def released(session: Session, host: Host, instance_id: str) -> None:
    """``host`` reported that it destroyed its copy of ``instance_id`` (fencing)."""
    inst = session.get(Instance, instance_id)
    if inst is None or not held_back(inst) or (inst.migration or {}).get("from") != host.id:
        return
    _released(session, inst)


def _released(session: Session, inst: Instance) -> None:
    inst.migration = {**(inst.migration or {}), "phase": "moving"}
    inst.updated_at = utcnow()
    if inst.host_id is not None:
        dest = session.get(Host, inst.host_id)
        if dest is not None:
            dest.bump()
        notify_later(session, f"host:{inst.host_id}")


def _abort(uow: UnitOfWork, inst: Instance, mig: dict[str, Any], reason: str) -> None:
    s = uow.session
    inst.migration = None
    inst.spec = {k: v for k, v in inst.spec.items() if k != "save"}
    if mig.get("resume"):
        inst.desired = DesiredState.RUNNING.value
    _bump(uow, inst, inst.host_id)
    _record(
        s,
        inst,
        "instance.migrate_failed",
        f"migration abandoned, the instance stays on {_host_name(s, inst.host_id)}: {reason}",
        level="error",
    )
    op = s.get(Operation, mig.get("operation")) if mig.get("operation") else None
    if op is not None:
        operations.fail(op, code="migration_failed", message=reason)


def _drain(uow: UnitOfWork) -> None:
    """Move the instances off draining hosts, a few at a time."""
    s = uow.session
    for host in s.scalars(select(Host).where(Host.state == HostState.DRAINING.value)):
        left = list(
            s.scalars(
                select(Instance).where(
                    Instance.host_id == host.id, Instance.status.not_in(RELEASED)
                )
            )
        )
        if not left:
            if host.state_reason != "drained":
                host.state_reason = "drained"
                events.record(
                    s,
                    "host.drained",
                    f"host {host.name} runs nothing any more: it can be removed",
                    host_id=host.id,
                )
            continue
        for inst in left:
            if inst.migration or inst.status not in MOVABLE:
                continue
            if inst.desired == DesiredState.DELETED.value or inst.spec.get("save"):
                continue
            stuck = disks_left_behind(s, inst, None)
            if stuck:
                inst.status_reason = f"draining {host.name}, but it cannot move: {stuck}"
                continue
            _start_cold(uow, inst, None, f"host {host.name} is draining")


def _start_cold(
    uow: UnitOfWork, inst: Instance, target: str | None, why: str, *, name: str = ""
) -> None:
    """Stop ``inst`` and have its host save the root disk; :func:`advance` does the rest."""
    s = uow.session
    name = name or _root_name(inst)
    image = new_saving_image(s, inst, name, inst.owner_id, inst.project_id)
    inst.migration = {
        "mode": "cold",
        "phase": "saving",
        "from": inst.host_id,
        "to": target,
        "image_id": image.id,
        "resume": inst.desired == DesiredState.RUNNING.value,
        "started": utcnow().isoformat(),
    }
    inst.desired = DesiredState.STOPPED.value
    inst.spec = {**inst.spec, "save": {"image_id": image.id}}
    _bump(uow, inst, inst.host_id)
    _record(
        s,
        inst,
        "instance.migrating",
        f"{why}: stopping and saving the root disk",
    )


def _recover(uow: UnitOfWork) -> None:
    """Restart elsewhere the instances of failed hosts whose HA policy says so."""
    s = uow.session
    settings = uow.ctx.settings
    cutoff = utcnow() - timedelta(seconds=settings.heartbeat_grace + settings.ha_delay)
    failed = list(
        s.scalars(
            select(Host).where(Host.state == HostState.OFFLINE.value, Host.last_heartbeat < cutoff)
        )
    )
    for host in failed:
        for inst in s.scalars(
            select(Instance).where(
                Instance.host_id == host.id,
                Instance.status == InstanceStatus.UNKNOWN.value,
                Instance.ha_policy.in_(("restart", "migrate")),
            )
        ):
            _evacuate(uow, inst, host)


def _evacuate(uow: UnitOfWork, inst: Instance, host: Host) -> None:
    s = uow.session
    stuck = disks_left_behind(s, inst, None)
    if inst.ha_policy == "migrate" and inst.spec.get("boot_volume"):
        boot = s.get(Volume, inst.spec["boot_volume"])
        if boot is not None and boot.host_id == host.id:
            stuck = stuck or f"its boot volume {boot.name} is on the failed host"
    if stuck:
        if "cannot restart" not in inst.status_reason:
            inst.status_reason = f"host {host.name} is offline; HA cannot restart it: {stuck}"
            _record(
                s,
                inst,
                "instance.ha_blocked",
                inst.status_reason,
                level="error",
                host_id=host.id,
            )
        return
    networks.instance_moved(uow, inst, host.id)
    inst.migration = None
    if inst.ha_policy == "restart":
        # cattle: a fresh root disk from the image
        inst.spec = {k: v for k, v in inst.spec.items() if k not in ("root_image_id", "save")}
    inst.host_id = None
    inst.ssh_port = None
    inst.status = InstanceStatus.PENDING.value
    inst.status_reason = f"host {host.name} failed; waiting for another host (HA {inst.ha_policy})"
    inst.pending_since = utcnow()
    inst.desired = DesiredState.RUNNING.value
    _bump(uow, inst, host.id)
    _record(
        s,
        inst,
        "instance.ha_restart",
        f"host {host.name} failed: {inst.ha_policy} elsewhere",
        level="warning",
        host_id=host.id,
    )


# -- live migration --------------------------------------------------------------------------


def _start_live(
    uow: UnitOfWork, principal: Principal, inst: Instance, host_ref: str | None
) -> Operation:
    """The destination agent pulls the running domain from the source's hypervisor
    (agent/reconcile.py ``migrate_in``); the instance keeps running on its old host until the
    destination reports it landed."""
    s = uow.session
    source, dest, placer = _live_hosts(uow, inst, host_ref)
    inst.migration = {
        "mode": "live",
        "phase": "migrating",
        "from": source.id,
        "to": dest.id,
        "source_uri": source.migration_uri,
        "port": placer.free_port(dest.id),
        "started": utcnow().isoformat(),
    }
    _bump(uow, inst, source.id, dest.id)
    _record(
        s,
        inst,
        "instance.migrating",
        f"live migration from {source.name} to {dest.name} started",
        host_id=source.id,
    )
    return _operation(s, principal, inst, running=True)


def _live_hosts(uow: UnitOfWork, inst: Instance, host_ref: str | None) -> tuple[Host, Host, Placer]:
    """Source and destination of a live move, once every refusal is ruled out."""
    s = uow.session
    if inst.status != InstanceStatus.RUNNING.value or inst.desired != DesiredState.RUNNING.value:
        raise Conflict(
            f"instance {inst.name} is {inst.status}; only a running instance moves live",
            hint="start it, or migrate it cold (without --live)",
            code="not_running",
        )
    source = s.get(Host, inst.host_id) if inst.host_id else None
    assert source is not None
    attached = s.scalar(
        select(VolumeAttachment.volume_id).where(VolumeAttachment.instance_id == inst.id)
    )
    if attached is not None or inst.spec.get("boot_volume"):
        raise Conflict(
            f"instance {inst.name} has volumes attached; live migration moves instances with "
            "local disks only in this version",
            hint="migrate it cold (without --live), or detach its volumes first",
            code="live_migration_volumes",
        )
    target = _check_target(s, uow, inst, host_ref)
    placer = Placer(s, uow.ctx.settings, exclude={source.id})
    if target is None:
        choice = placer.board.place(request_for(inst))
        assert choice.host is not None  # _check_target found one
        target = choice.host.id
    dest = s.get(Host, target)
    assert dest is not None
    for host in (source, dest):
        if not host.migration_uri:
            raise Conflict(
                f"host {host.name} does not take part in live migration (no migration URI)",
                hint="set migration_uri on both nodes (STRATUS_NODE_MIGRATION_URI), or migrate "
                "cold",
                code="live_migration_unavailable",
            )
    return source, dest, placer


def live_role(inst: Instance, host_id: str) -> str:
    """``incoming`` / ``leaving`` when ``inst`` is live-migrating to / from ``host_id``."""
    mig = inst.migration or {}
    if mig.get("mode") != "live" or mig.get("phase") != "migrating":
        return ""
    if mig.get("to") == host_id:
        return "incoming"
    return "leaving" if mig.get("from") == host_id else ""


def incoming(session: Session, host_id: str) -> list[Instance]:
    """The instances live-migrating to ``host_id``."""
    return [
        inst
        for inst in session.scalars(select(Instance).where(Instance.migration.is_not(None)))
        if live_role(inst, host_id) == "incoming"
    ]


def landed(session: Session, host: Host, instance_id: str) -> None:
    """``host`` reports the live-migrated instance runs there now."""
    inst = session.get(Instance, instance_id)
    if inst is None or live_role(inst, host.id) != "incoming":
        return
    mig = dict(inst.migration or {})
    old = inst.host_id
    inst.host_id, inst.ssh_port = host.id, int(mig["port"])
    inst.migration = None
    _touch(session, inst, old, host.id)
    _record(
        session,
        inst,
        "instance.migrated",
        f"live migration from {_host_name(session, old)} to {host.name} done",
        host_id=host.id,
    )


def live_failed(session: Session, dest_id: str, instance_id: str, reason: str) -> None:
    """The destination could not pull the instance: it stays where it runs."""
    inst = session.get(Instance, instance_id)
    if inst is None or live_role(inst, dest_id) != "incoming":
        return
    mig = dict(inst.migration or {})
    inst.migration = None
    _touch(session, inst, inst.host_id, dest_id)
    _record(
        session,
        inst,
        "instance.migrate_failed",
        f"live migration to {_host_name(session, dest_id)} failed, the instance runs on: {reason}",
        level="error",
    )
    op = session.get(Operation, mig.get("operation")) if mig.get("operation") else None
    if op is not None:
        operations.fail(op, code="migration_failed", message=reason)
