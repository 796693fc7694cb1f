"""The volume side of the agent protocol: what the pool of a host must hold and what its
instances must have attached (the desired state), and what the node reports back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Instance, Volume, VolumeAttachment, utcnow
from stratuslab.drivers.base import volume_target
from stratuslab.schemas.agent import (
    DesiredAttachment,
    DesiredInstance,
    DesiredVolume,
    ImageRef,
    ObservedInstance,
    ObservedVolume,
    Report,
)
from stratuslab.services import events
from stratuslab.services.context import notify_later
from stratuslab.services.volume_attachments import release
from stratuslab.services.volume_operations import evaluate_operations
from stratuslab.services.volume_states import (
    BOOT_INDEX,
    AttachState,
    VolumeKind,
    VolumeState,
    attachments_of,
    gib_text,
    record,
    set_state,
    settle,
    touch_pool,
)
from stratuslab.types import HostState, InstanceStatus


def desired_volumes(session: Session, host: Host) -> list[DesiredVolume]:
    """The volumes the pool of ``host`` must hold or delete."""
    rows = list(
        session.scalars(
            select(Volume)
            .where(
                Volume.host_id == host.id,
                Volume.state.not_in([VolumeState.DELETED.value, VolumeState.ERROR.value]),
            )
            .order_by(Volume.created_at)
        )
    )
    consumers = _remote_consumers(session, host, [v.id for v in rows])
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
                root_of=vol.source.get("root_of"),
                exports=sorted(consumers.get(vol.id, ())),
            )
        )
    return out


def _remote_consumers(session: Session, host: Host, volume_ids: list[str]) -> dict[str, set[str]]:
    """Volume id -> the names of the other hosts whose instances attach it (in any state:
    a detaching instance still has it open)."""
    out: dict[str, set[str]] = {}
    if not volume_ids:
        return out
    rows = session.execute(
        select(VolumeAttachment.volume_id, Host.name)
        .join(Instance, Instance.id == VolumeAttachment.instance_id)
        .join(Host, Host.id == Instance.host_id)
        .where(VolumeAttachment.volume_id.in_(volume_ids), Host.id != host.id)
    )
    for volume_id, name in rows:
        out.setdefault(volume_id, set()).add(name)
    return out


def desired_attachments(
    session: Session, instance_ids: list[str]
) -> dict[str, list[DesiredAttachment]]:
    """What each instance must have attached (attaching and attached, not detaching)."""
    out: dict[str, list[DesiredAttachment]] = {}
    if not instance_ids:
        return out
    rows = session.execute(
        select(VolumeAttachment, Volume, Instance.host_id, Host.name)
        .join(Volume, Volume.id == VolumeAttachment.volume_id)
        .join(Instance, Instance.id == VolumeAttachment.instance_id)
        .outerjoin(Host, Host.id == Instance.host_id)
        .where(
            VolumeAttachment.instance_id.in_(instance_ids),
            VolumeAttachment.state != AttachState.DETACHING.value,
            VolumeAttachment.index != BOOT_INDEX,
        )
        .order_by(VolumeAttachment.index)
    )
    for att, vol, host_id, host_name in rows:
        want = DesiredAttachment(
            volume_id=att.volume_id, index=att.index, readonly=vol.readonly, shareable=vol.readonly
        )
        if vol.host_id != host_id:
            want.remote = True
            want.url, want.format = _export_for(vol, host_name)
        out.setdefault(att.instance_id, []).append(want)
    return out


def _export_for(vol: Volume, host_name: str | None) -> tuple[str | None, str]:
    """Where ``host_name`` opens ``vol`` of another host's pool: the URL once that pool has
    reported it exported there (None until then), and the format."""
    export = vol.source.get("export") or {}
    ready = host_name in (export.get("hosts") or ()) and export.get("url")
    return (str(export["url"]) if ready else None), str(export.get("format") or "raw")


def fill_remote_boot(session: Session, host: Host, items: list[DesiredInstance]) -> None:
    """Instances of ``host`` booting from a volume of another host's (shared) pool open it
    at the URL that pool reported (``boot_volume_url``; None: not exported here yet)."""
    ids = [i.boot_volume for i in items if i.boot_volume]
    if not ids:
        return
    remote = {
        v.id: v
        for v in session.scalars(select(Volume).where(Volume.id.in_(ids)))
        if v.host_id != host.id
    }
    for item in items:
        vol = remote.get(item.boot_volume or "")
        if vol is not None:
            item.boot_volume_remote = True
            item.boot_volume_url, item.boot_volume_format = _export_for(vol, host.name)


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
    live = [o.id for o in report.instances if o.status != InstanceStatus.DELETED.value]
    _ask_exports(session, host, live)
    return evaluate_operations(session, touched, failures)


def _observe_volume(session: Session, vol: Volume, obs: ObservedVolume) -> dict[str, Any] | None:
    if obs.observed_generation < vol.observed_generation:
        return None  # stale
    current = obs.observed_generation >= vol.generation
    if obs.error and current:
        return _volume_failed(session, vol, obs.error)
    vol.observed_generation = min(obs.observed_generation, vol.generation)
    problem = _observe_export(session, vol, obs)
    if vol.state == VolumeState.DELETING.value and not obs.exists:
        set_state(session, vol, VolumeState.DELETED, "data wiped")
        vol.deleted_at = utcnow()
    elif vol.state == VolumeState.CREATING.value and obs.exists and current:
        if vol.source.get("root_of") and obs.size_bytes > vol.size_bytes:
            vol.size_bytes = obs.size_bytes  # the root disk was larger than its image
        if vol.kind == VolumeKind.ROOT.value:
            from stratuslab.services import quarantine  # a cycle: quarantine imports volumes

            quarantine.enter(session, vol, "root disk of a deleted instance kept")
        else:
            settle(session, vol, f"{gib_text(obs.size_bytes)} ready")
    return problem


def _observe_export(session: Session, vol: Volume, obs: ObservedVolume) -> dict[str, Any] | None:
    """Where other hosts open the volume (kept in ``source["export"]``). A change wakes the
    hosts attaching it; a failed export fails their pending attachments."""
    before = vol.source.get("export") or {}
    now = (
        {"url": obs.export_url, "format": obs.export_format, "hosts": sorted(obs.exported_to)}
        if obs.exported_to
        else {}
    )
    if now != before:
        source = {k: v for k, v in vol.source.items() if k != "export"}
        vol.source = {**source, "export": now} if now else source
        for att in attachments_of(session, volume_id=vol.id):
            inst = session.get(Instance, att.instance_id)
            if inst is not None and inst.host_id not in (None, vol.host_id):
                host = session.get(Host, inst.host_id)
                if host is not None:
                    host.bump()
                notify_later(session, f"host:{inst.host_id}")
    if obs.export_error != vol.source.get("export_error", ""):
        # said once per new error: instances booting from it wait for the export meanwhile
        source = {k: v for k, v in vol.source.items() if k != "export_error"}
        vol.source = {**source, "export_error": obs.export_error} if obs.export_error else source
        if obs.export_error:
            events.record(
                session,
                "volume.export_failed",
                f"volume {vol.name}: exporting it to other hosts failed: {obs.export_error}",
                level="error",
                host_id=vol.host_id,
                project_id=vol.project_id,
                data={"volume_id": vol.id},
            )
    if not obs.export_error:
        return None
    problem: dict[str, Any] | None = None
    for att in attachments_of(session, volume_id=vol.id):
        inst = session.get(Instance, att.instance_id)
        if inst is None or inst.host_id == vol.host_id or att.state != AttachState.ATTACHING.value:
            continue
        session.delete(att)
        session.flush()
        problem = _attach_failed(session, vol, inst, "attaching", obs.export_error)
        settle(session, vol)
    return problem


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
    for att in attachments_of(session, instance_id=inst.id):
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
            touch_pool(session, vol, inst)
            problem = _attach_failed(session, vol, inst, "attaching", error)
        elif att.state == AttachState.DETACHING.value and att.volume_id not in attached:
            session.delete(att)
            touch_pool(session, vol, inst)
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
    if changed:
        host.bump()  # the instance's desired attachments changed: its agent reads them again
    return changed


def _ask_exports(session: Session, host: Host, instance_ids: list[str]) -> None:
    """Instances of ``host`` that need a volume of another host's pool (a boot volume, an
    attachment) not exported to ``host`` yet: wake that pool's host. Level-triggered (one
    query per report), for the ways an instance comes to a host without the volume services
    hearing of it: a pending instance placed later, an HA restart elsewhere."""
    if not instance_ids:
        return
    rows = session.execute(
        select(Volume.host_id, Volume.source)
        .join(VolumeAttachment, VolumeAttachment.volume_id == Volume.id)
        .join(Instance, Instance.id == VolumeAttachment.instance_id)
        .join(Host, Host.id == Volume.host_id)
        .where(
            VolumeAttachment.instance_id.in_(instance_ids),
            VolumeAttachment.state != AttachState.DETACHING.value,
            Instance.host_id == host.id,
            Volume.host_id != host.id,
            Host.state != HostState.OFFLINE.value,  # nothing to wake there
        )
    )
    pools = {
        pool_id
        for pool_id, source in rows
        if pool_id and host.name not in (((source or {}).get("export") or {}).get("hosts") or ())
    }
    for pool_id in sorted(pools):
        pool = session.get(Host, pool_id)
        if pool is not None:
            pool.bump()
        notify_later(session, f"host:{pool_id}")


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
