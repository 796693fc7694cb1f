"""Self-registration: ``/register`` (anyone) and ``/registrations`` (cloud admins)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from stratuslab.api.deps import CtxDep, PrincipalDep, authenticator
from stratuslab.db.models import Registration as RegistrationRow
from stratuslab.db.models import utcnow
from stratuslab.schemas.identity import (
    Accepted,
    Registration,
    RegistrationCreate,
    RegistrationDecision,
)
from stratuslab.services import quotas, registration

router = APIRouter(tags=["registration"])


def registration_out(row: RegistrationRow) -> Registration:
    return Registration(
        id=row.id,
        user_id=row.user_id or "",
        user=row.username,
        email=row.email,
        status=row.status,
        created_at=row.created_at,
        verified_at=row.verified_at,
        decided_at=row.decided_at,
        reason=row.reason,
    )


@router.post("/register", status_code=202)
def register(body: RegistrationCreate, request: Request, ctx: CtxDep) -> Accepted:
    """Ask for an account: a verification link is e-mailed, then an admin decides."""
    registration.require_enabled(ctx.settings)
    auth = authenticator(request.app, ctx)
    request.state.actor = body.username
    with ctx.uow() as s:
        row, mail = registration.request(
            s,
            ctx.settings,
            auth.passwords,
            username=body.username,
            email=body.email,
            password=body.password,
            full_name=body.full_name,
            now=utcnow(),
        )
        reg_id = row.id
    try:
        registration.send(ctx.settings, mail)
    except Exception:
        with ctx.uow() as s:
            found = s.get(RegistrationRow, reg_id)
            if found is not None:
                s.delete(found)
        raise
    return Accepted(
        message=f"a verification link was sent to {body.email}; an administrator reviews "
        "the request once you have opened it",
        details={"registration_id": reg_id},
    )


@router.get("/register/verify")
def verify(ctx: CtxDep, token: str = Query(max_length=200)) -> Accepted:
    """The e-mailed link: confirms the address."""
    with ctx.uow() as s:
        row = registration.verify(s, token, now=utcnow())
        return Accepted(
            message="thank you: your e-mail address is confirmed; an administrator will "
            "review your request",
            details={"registration_id": row.id},
        )


@router.get("/registrations")
def list_registrations(
    ctx: CtxDep, _p: PrincipalDep, status: str | None = None
) -> list[Registration]:
    with ctx.sessions() as s:
        return [registration_out(r) for r in registration.list_registrations(s, status)]


@router.post("/registrations/{reg_id}/approve")
def approve(
    reg_id: str, body: RegistrationDecision, request: Request, ctx: CtxDep, principal: PrincipalDep
) -> Registration:
    auth = authenticator(request.app, ctx)
    with ctx.uow() as s:
        row, mail = registration.approve(
            s,
            principal,
            auth.passwords,
            reg_id,
            project=body.project,
            role=body.role,
            limits=quotas.parse_limits(ctx.settings.default_project_quota),
            now=utcnow(),
        )
        out = registration_out(row)
    registration.send_quietly(ctx.settings, mail)
    return out


@router.post("/registrations/{reg_id}/reject")
def reject(
    reg_id: str, body: RegistrationDecision, ctx: CtxDep, principal: PrincipalDep
) -> Registration:
    with ctx.uow() as s:
        row, mail = registration.reject(s, principal, reg_id, reason=body.reason, now=utcnow())
        out = registration_out(row)
    registration.send_quietly(ctx.settings, mail)
    return out
