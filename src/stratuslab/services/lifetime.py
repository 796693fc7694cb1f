"""Instance lifetime limits: a project may cap how long an instance runs.

With ``projects.max_instance_lifetime`` set (seconds), an instance running for longer than
that since it last started is stopped (not deleted: its disk stays, and the owner can start
it again for another period). ``lifetime_warning`` seconds before, an
``instance.lifetime_warning`` event tells the owner. The controller's housekeeping loop
calls :func:`enforce` every pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Instance, Project, utcnow
from stratuslab.services import events
from stratuslab.services.context import UnitOfWork
from stratuslab.types import DesiredState, InstanceStatus


@dataclass
class Pass:
    warned: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)


def enforce(uow: UnitOfWork, *, now: datetime | None = None) -> Pass:
    """Warn about and stop instances past their project's lifetime limit."""
    s = uow.session
    now = now or utcnow()
    warning = timedelta(seconds=uow.ctx.settings.lifetime_warning)
    result = Pass()
    rows = s.execute(
        select(Instance, Project.max_instance_lifetime, Project.name)
        .join(Project, Project.id == Instance.project_id)
        .where(
            Project.max_instance_lifetime.is_not(None),
            Instance.desired == DesiredState.RUNNING.value,
            Instance.status == InstanceStatus.RUNNING.value,
            Instance.started_at.is_not(None),
        )
    )
    for inst, seconds, project in rows:
        if inst.started_at is None or seconds is None:
            continue
        limit = timedelta(seconds=seconds)
        ends = inst.started_at + limit
        if now >= ends:
            _stop(uow, s, inst, project, limit)
            result.stopped.append(inst.id)
        elif now >= ends - warning and not _warned(inst):
            inst.lifetime_warned_at = now
            events.record(
                s,
                "instance.lifetime_warning",
                f"instance {inst.name} reaches the lifetime limit of project {project} "
                f"({_human(limit)}) at {ends.isoformat(timespec='seconds')} and will be "
                "stopped then",
                level="warning",
                instance_id=inst.id,
                host_id=inst.host_id,
                project_id=inst.project_id,
                data={"stops_at": ends.isoformat(), "limit_seconds": seconds},
            )
            result.warned.append(inst.id)
    return result


def _warned(inst: Instance) -> bool:
    started = inst.started_at
    return inst.lifetime_warned_at is not None and (
        started is None or inst.lifetime_warned_at >= started
    )


def _stop(uow: UnitOfWork, s: Session, inst: Instance, project: str, limit: timedelta) -> None:
    inst.desired = DesiredState.STOPPED.value
    inst.generation += 1
    inst.updated_at = utcnow()
    if inst.host_id is not None:
        host = s.get(Host, inst.host_id)
        if host is not None:
            host.bump()
        uow.notify(f"host:{inst.host_id}")
    events.record(
        s,
        "instance.lifetime_stop",
        f"instance {inst.name} ran for the lifetime limit of project {project} "
        f"({_human(limit)}): stopping it; `stratus start {inst.name}` runs it again",
        level="warning",
        instance_id=inst.id,
        host_id=inst.host_id,
        project_id=inst.project_id,
    )


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
