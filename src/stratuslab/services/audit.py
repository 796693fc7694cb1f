"""The audit log: every mutating API call, who made it, when, from where, and the answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import AuditRecord, User


@dataclass(frozen=True)
class Entry:
    method: str
    path: str
    status: int
    source: str
    duration_ms: float
    user_id: str | None = None
    credential: str = ""
    project_id: str | None = None
    #: what a failed login claimed to be (no user id then)
    actor: str = ""


def record(session: Session, entry: Entry) -> None:
    actor = entry.actor
    if entry.user_id is not None and not actor:
        actor = session.scalar(select(User.name).where(User.id == entry.user_id)) or ""
    session.add(
        AuditRecord(
            user_id=entry.user_id,
            actor=actor[:255],
            credential=entry.credential[:1024],
            method=entry.method[:8],
            path=entry.path,
            status=entry.status,
            source=entry.source[:64],
            project_id=entry.project_id,
            duration_ms=round(entry.duration_ms, 3),
        )
    )


def query(
    session: Session,
    *,
    user: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[AuditRecord]:
    stmt = select(AuditRecord).where(AuditRecord.id > after)
    if user is not None:
        stmt = stmt.where((AuditRecord.user_id == user) | (AuditRecord.actor == user))
    if since is not None:
        stmt = stmt.where(AuditRecord.time >= since)
    if until is not None:
        stmt = stmt.where(AuditRecord.time < until)
    return list(session.scalars(stmt.order_by(AuditRecord.id).limit(min(max(limit, 1), 1000))))
