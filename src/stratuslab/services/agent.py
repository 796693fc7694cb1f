"""The controller's side of the agent protocol: desired state out, observations in."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import and_, not_, or_, select, update
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Image, Instance, utcnow
from stratuslab.schemas.agent import (
    ConsoleChunk,
    DesiredAttachment,
    DesiredInstance,
    DesiredState,
    ImageRef,
    ObservedInstance,
    Report,
    ReportAck,
)
from stratuslab.services import events, mobility, network_desired, networks, operations, volumes
from stratuslab.services.instances import mark_deleted
from stratuslab.services.volume_agent import fill_remote_boot
from stratuslab.types import DesiredState as Desired
from stratuslab.types import InstanceStatus

#: how much console text the controller keeps per instance
CONSOLE_LIMIT = 1024 * 1024


def desired_state(
    session: Session, host: Host, stop_timeout: float, *, egress: bool = False
) -> DesiredState:
    rows = _moved_roots(
        session,
        [
            (inst, image)
            for inst, image in session.execute(
                select(Instance, Image)
                .join(Image, Image.id == Instance.image_id)
                .where(Instance.host_id == host.id, *_ON_THE_HOST)
                .order_by(Instance.created_at)
            )
        ],
    )
    attachments = volumes.desired_attachments(session, [inst.id for inst, _ in rows])
    items = [
        _desired_instance(inst, image, stop_timeout, egress, attachments.get(inst.id, []))
        for inst, image in rows
        if not mobility.held_back(inst)
    ]
    for item, (inst, _) in zip(
        items, [r for r in rows if not mobility.held_back(r[0])], strict=True
    ):
        item.migrating_away = mobility.live_role(inst, host.id) == "leaving"
    fill_remote_boot(session, host, items)  # boot volumes of other hosts' shared pools
    items += _incoming(session, host, stop_timeout, egress)
    state = DesiredState(
        host_id=host.id,
        generation=host.desired_generation,
        instances=items,
        volumes=volumes.desired_volumes(session, host),
    )
    return network_desired.fill(session, state, {inst.id: inst for inst, _ in rows})


def _moved_roots(
    session: Session, rows: list[tuple[Instance, Image]]
) -> list[tuple[Instance, Image]]:
    """A cold-migrated instance boots from its saved root disk (services/mobility.py), not
    from the image it was made from."""
    moved = {
        inst.id: str(inst.spec["root_image_id"])
        for inst, _ in rows
        if inst.spec.get("root_image_id")
    }
    if not moved:
        return rows
    roots = {
        i.id: i for i in session.scalars(select(Image).where(Image.id.in_(set(moved.values()))))
    }
    return [(inst, roots.get(moved.get(inst.id, ""), image)) for inst, image in rows]


def _incoming(
    session: Session, host: Host, stop_timeout: float, egress: bool
) -> list[DesiredInstance]:
    """Instances live-migrating to ``host``: it pulls them from their source hypervisor."""
    out = []
    for inst in mobility.incoming(session, host.id):
        rows = _moved_roots(session, [(inst, session.get_one(Image, inst.image_id))])
        item = _desired_instance(inst, rows[0][1], stop_timeout, egress, [])
        mig = inst.migration or {}
        item.migrate_from = str(mig.get("source_uri") or "")
        item.ssh_port = int(mig.get("port") or 0) or None
        out.append(item)
    return out


#: instances a host must converge: not gone for good, placed, and not a cleaned-up failure
_ON_THE_HOST = (
    or_(
        Instance.status != InstanceStatus.DELETED.value,
        Instance.desired != Desired.DELETED.value,
    ),
    Instance.status != InstanceStatus.PENDING.value,
    # a failed provisioning was cleaned up by the agent: nothing left to converge
    not_(
        and_(
            Instance.status == InstanceStatus.FAILED.value,
            Instance.observed_generation >= Instance.generation,
        )
    ),
)


def _desired_instance(
    inst: Instance,
    image: Image,
    stop_timeout: float,
    egress: bool,
    attached: list[DesiredAttachment],
) -> DesiredInstance:
    spec = inst.spec
    return DesiredInstance(
        id=inst.id,
        name=inst.name,
        hostname=str(spec.get("hostname") or inst.name.lower()),
        generation=inst.generation,
        desired=inst.desired,
        vcpus=inst.vcpus,
        memory_mib=inst.memory_mib,
        image=ImageRef(
            id=image.id,
            sha256=image.sha256,
            format=image.format,
            size_bytes=image.size_bytes,
            locations=list(image.locations or []),
            compression=image.compression,
            sha512=image.sha512,
        ),
        ssh_port=inst.ssh_port,
        ssh_keys=list(spec.get("ssh_keys") or []),
        user_data=spec.get("user_data"),
        context_method=str(spec.get("context_method") or "nocloud"),
        context=dict(spec.get("context") or {}),
        save_image_id=(spec.get("save") or {}).get("image_id"),
        volumes=attached,
        boot_volume=spec.get("boot_volume"),
        egress=egress,
        reboot_seq=inst.reboot_seq,
        ha_policy=inst.ha_policy,
        reboot_hard=inst.reboot_hard,
        stop_timeout=stop_timeout,
        recorded_status=inst.status,
    )


def apply_report(
    session: Session, host: Host, report: Report, console_dir: Path
) -> tuple[ReportAck, list[str]]:
    """Record observations; return the ack and the operations that finished."""
    ids = [o.id for o in report.instances] + [c.instance_id for c in report.console]
    known = (
        {i.id: i for i in session.scalars(select(Instance).where(Instance.id.in_(ids)))}
        if ids
        else {}
    )
    forget: list[str] = []
    changed: dict[str, Instance] = {}
    reshaped = False
    for obs in report.instances:
        inst = known.get(obs.id)
        if inst is None or inst.host_id != host.id:
            forget.append(obs.id)
            continue
        before = (inst.status, inst.desired)
        if _observe(session, inst, obs):
            changed[inst.id] = inst
            reshaped = reshaped or _reshapes(before, inst)
    for chunk in report.console:
        inst = known.get(chunk.instance_id)
        if inst is not None and inst.host_id == host.id:
            inst.console_bytes = append_console(console_dir, chunk)
    for ev in report.events:
        inst = known.get(ev.instance_id or "")
        if ev.kind == "host.fenced" and ev.instance_id:
            mobility.released(session, host, ev.instance_id)
        elif ev.kind == "instance.migrated_live" and ev.instance_id:
            mobility.landed(session, host, ev.instance_id)
        elif ev.kind == "instance.migrate_failed" and ev.instance_id:
            mobility.live_failed(session, host.id, ev.instance_id, ev.message)
        events.record(
            session,
            ev.kind,
            ev.message,
            level=ev.level,
            instance_id=ev.instance_id,
            host_id=host.id,
            project_id=inst.project_id if inst else None,
        )
    if reshaped:
        # what the host must run follows what it reported (a failure cleaned up, a guest
        # that powered itself off, a deletion done): its agent reads the state again
        host.bump()
    _seen(session, host)
    finished = operations.evaluate_for(session, changed)
    finished += volumes.apply_report(session, host, report)
    return ReportAck(forget=forget), finished


#: statuses after which an instance leaves its host's desired state (or its networks)
_LEAVING = frozenset(
    {InstanceStatus.DELETED.value, InstanceStatus.FAILED.value, InstanceStatus.PENDING.value}
)


def _reshapes(before: tuple[str, str], inst: Instance) -> bool:
    """Did an observation change what the host must run? A deletion done, a failure
    cleaned up, a guest that powered itself off (its desired state follows) do; a guest
    that came up does not, and its agent is spared reading the whole state again."""
    status, desired = before
    if inst.desired != desired:
        return True
    return inst.status != status and inst.status in _LEAVING


#: a report refreshes its host's ``last_heartbeat`` when it is older than this (seconds)
SEEN_INTERVAL = 5.0


def _seen(session: Session, host: Host) -> None:
    """A report is a sign of life too: refresh the host's ``last_heartbeat``, best effort.

    Not on every report, and on PostgreSQL never waiting for the host's row: a transaction
    that placed an instance on the host or changed its desired state holds the row (its
    generation bump) until it commits, and a report queuing behind it would hold an API
    thread and a connection. Heartbeats keep the timestamp
    current whatever happens here."""
    now = utcnow()
    last = host.last_heartbeat
    if last is not None and (now - last).total_seconds() < SEEN_INTERVAL:
        return
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        host.last_heartbeat = now
        return
    free = (
        select(Host.id)
        .where(Host.id == host.id)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    session.execute(
        update(Host).where(Host.id == free).values(last_heartbeat=now),
        execution_options={"synchronize_session": False},
    )


def _observe(session: Session, inst: Instance, obs: ObservedInstance) -> bool:
    if obs.observed_generation < inst.observed_generation:
        return False  # stale report from before a restart
    if inst.status == InstanceStatus.DELETED.value:
        return False
    before = (inst.status, inst.observed_generation)
    inst.observed_generation = min(obs.observed_generation, inst.generation)
    if obs.status == InstanceStatus.DELETED.value:
        mark_deleted(inst)
        networks.release_instance(session, inst)
    elif (
        obs.status == InstanceStatus.STOPPED.value
        and inst.desired == Desired.RUNNING.value
        and obs.observed_generation >= inst.generation
    ):
        # The guest powered itself off: what should be follows what is (no restart loop).
        inst.desired = Desired.STOPPED.value
        inst.status = obs.status
        inst.status_reason = obs.reason
    else:
        inst.status = obs.status
        inst.status_reason = obs.reason
        if obs.status == InstanceStatus.RUNNING.value and before[0] != obs.status:
            inst.started_at = utcnow()
    if (inst.status, inst.observed_generation) == before:
        return False
    inst.updated_at = utcnow()
    if inst.status != before[0]:
        level = "error" if inst.status == InstanceStatus.FAILED.value else "info"
        message = f"{before[0]} -> {inst.status}" + (f": {obs.reason}" if obs.reason else "")
        events.record(
            session,
            f"instance.{inst.status}",
            message,
            level=level,
            instance_id=inst.id,
            host_id=inst.host_id,
            project_id=inst.project_id,
        )
    return True


def append_console(console_dir: Path, chunk: ConsoleChunk) -> int:
    """Store console text at its offset (a resent chunk overwrites); return the new size."""
    console_dir.mkdir(parents=True, exist_ok=True)
    path = console_dir / f"{chunk.instance_id}.log"
    data = chunk.data.encode("latin-1", errors="replace")  # agents send bytes as latin-1
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        size = os.fstat(fd).st_size
        offset = min(chunk.offset, size)
        if offset + len(data) > CONSOLE_LIMIT:
            return size
        os.pwrite(fd, data, offset)
        end = offset + len(data)
        if end < size:
            os.ftruncate(fd, end)
        return end
    finally:
        os.close(fd)


def read_console(console_dir: Path, instance_id: str, offset: int) -> tuple[int, str]:
    path = console_dir / f"{instance_id}.log"
    if not path.exists():
        return 0, ""
    with path.open("rb") as fh:
        fh.seek(max(offset, 0))
        data = fh.read(CONSOLE_LIMIT)
    return max(offset, 0) + len(data), data.decode("utf-8", errors="replace")
