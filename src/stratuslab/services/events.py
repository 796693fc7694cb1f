"""The event log: every state change and failure, with a human reason."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Event


def record(
    session: Session,
    kind: str,
    message: str,
    *,
    level: str = "info",
    instance_id: str | None = None,
    host_id: str | None = None,
    project_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        Event(
            kind=kind,
            message=message,
            level=level,
            instance_id=instance_id,
            host_id=host_id,
            project_id=project_id,
            data=data or {},
        )
    )


def list_events(
    session: Session,
    *,
    project_id: str | None,
    instance_id: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[Event]:
    stmt = select(Event).where(Event.id > after).order_by(Event.id).limit(min(limit, 1000))
    if project_id is not None:
        stmt = stmt.where(Event.project_id == project_id)
    if instance_id is not None:
        stmt = stmt.where(Event.instance_id == instance_id)
    return list(session.scalars(stmt))
