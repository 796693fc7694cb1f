"""Accounting (``/usage``) and the audit log (``/audit``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Query, Response

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.db.models import utcnow
from stratuslab.identity import accounting
from stratuslab.identity.authz import Kind, read_filter
from stratuslab.schemas.identity import AuditRecord, UsageRecord
from stratuslab.services import access, audit, usage

router = APIRouter(tags=["usage"])


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@router.get(
    "/usage",
    response_model=list[UsageRecord],
    responses={200: {"content": {"text/csv": {}, "text/plain": {}}}},
)
def get_usage(
    ctx: CtxDep,
    principal: PrincipalDep,
    project: str | None = Query(None, description="project name or id (default: all yours)"),
    start: datetime | None = Query(None, alias="from", description="default: this month"),
    end: datetime | None = Query(None, alias="to", description="default: now"),
    format: Literal["json", "csv", "apel"] = "json",
) -> Response | list[UsageRecord]:
    """Usage per instance (vCPU-hours, RAM GB-hours, wall time, host) in a period, from
    the event history; ``apel``: an EGI cloud accounting message (cloud admins)."""
    now = utcnow()
    until = _utc(end) if end is not None else now
    period = accounting.Period(_utc(start) if start is not None else month_start(until), until)
    with ctx.sessions() as s:
        if project is not None:
            projects: list[str] | None = [access.find_project(s, principal, project).id]
        else:
            flt = read_filter(principal, Kind.USAGE)
            projects = None if flt.everything else sorted(principal.roles)
        if format == "apel":
            principal.require_admin("exporting APEL accounting records")
            records = usage.instance_usage(s, projects, accounting.lifetime(until))
            return Response(usage.apel(s, ctx.settings, records), media_type="text/plain")
        records = usage.instance_usage(s, projects, period)
    if format == "csv":
        return Response(accounting.to_csv(records), media_type="text/csv")
    return [UsageRecord.model_validate(r, from_attributes=True) for r in records]


@router.get("/audit")
def get_audit(
    ctx: CtxDep,
    _p: PrincipalDep,
    user: str | None = Query(None, description="user id or name"),
    start: datetime | None = Query(None, alias="from"),
    end: datetime | None = Query(None, alias="to"),
    after: int = Query(0, ge=0, description="records after this id (paging)"),
    limit: int = Query(100, ge=1, le=1000),
) -> list[AuditRecord]:
    """Mutating API calls: who, what, when, from where (cloud admins)."""
    with ctx.sessions() as s:
        rows = audit.query(
            s,
            user=user,
            since=_utc(start) if start else None,
            until=_utc(end) if end else None,
            after=after,
            limit=limit,
        )
        return [AuditRecord.model_validate(r) for r in rows]
