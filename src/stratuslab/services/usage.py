"""Accounting from the event history: usage per instance, CSV, JSON and EGI APEL.

The node agents' status reports write ``instance.<status>`` events (services/agent.py);
this module turns ``instance.running`` into *started*, ``instance.stopped`` and
``instance.failed`` into *stopped* and ``instance.deleted`` into *deleted*, takes the size
(vCPUs, memory, disk), image and owner from the instance row (they never change after
creation), and the host from the event, then lets
:func:`stratuslab.identity.accounting.instance_usage` add it up.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.config import ControllerSettings
from stratuslab.db.models import Event, Host, Instance, Project, User, UserIdentity
from stratuslab.identity import accounting
from stratuslab.identity.accounting import InstanceEvent, InstanceEventKind, InstanceUsage, Period

KINDS = {
    "instance.running": InstanceEventKind.STARTED,
    "instance.stopped": InstanceEventKind.STOPPED,
    "instance.failed": InstanceEventKind.STOPPED,
    "instance.deleted": InstanceEventKind.DELETED,
}


def instance_events(
    session: Session, project_ids: Collection[str] | None, *, until: datetime
) -> list[InstanceEvent]:
    """The accounting events of the instances of ``project_ids`` (None: every project)."""
    stmt = (
        select(Event.time, Event.kind, Event.host_id, Instance)
        .join(Instance, Instance.id == Event.instance_id)
        .where(Event.kind.in_(list(KINDS)), Event.time < until)
        .order_by(Event.id)
    )
    if project_ids is not None:
        stmt = stmt.where(Instance.project_id.in_(sorted(project_ids)))
    rows = list(session.execute(stmt))
    host_ids = {host_id for _, _, host_id, _ in rows if host_id}
    hosts = (
        dict(session.execute(select(Host.id, Host.name).where(Host.id.in_(host_ids))).all())
        if host_ids
        else {}
    )
    return [
        InstanceEvent(
            time=time,
            instance_id=inst.id,
            kind=KINDS[kind],
            vcpus=inst.vcpus,
            memory_mib=inst.memory_mib,
            host=hosts.get(host_id or "", host_id or ""),
            project_id=inst.project_id,
            user_id=inst.owner_id,
            name=inst.name,
            image_id=inst.image_id,
            disk_gib=inst.disk_gib,
        )
        for time, kind, host_id, inst in rows
    ]


def instance_usage(
    session: Session, project_ids: Collection[str] | None, period: Period
) -> list[InstanceUsage]:
    events = instance_events(session, project_ids, until=period.end)
    return accounting.instance_usage(events, period)


def apel(session: Session, settings: ControllerSettings, usages: list[InstanceUsage]) -> str:
    """An APEL cloud message; ``GlobalUserName`` from linked certificate DNs, ``FQAN`` is
    the project name."""
    site = accounting.ApelSite(
        site_name=settings.apel_site_name or "unknown",
        cloud_compute_service=settings.apel_cloud_compute_service,
        benchmark_type=settings.apel_benchmark_type,
        benchmark=settings.apel_benchmark or None,
    )
    user_ids = sorted({u.user_id for u in usages})
    project_ids = sorted({u.project_id for u in usages})
    dns = dict(
        session.execute(
            select(UserIdentity.user_id, UserIdentity.subject).where(
                UserIdentity.kind == "x509", UserIdentity.user_id.in_(user_ids)
            )
        ).all()
    )
    fqans = dict(
        session.execute(select(Project.id, Project.name).where(Project.id.in_(project_ids))).all()
    )
    return accounting.apel_message(usages, site, user_dns=dns, fqans=fqans)


def user_names(session: Session, user_ids: Collection[str]) -> dict[str, str]:
    return dict(
        session.execute(select(User.id, User.name).where(User.id.in_(sorted(user_ids)))).all()
    )
