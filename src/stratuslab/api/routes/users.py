"""Users and their linked identities: ``/users``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from stratuslab.api.deps import CtxDep, PrincipalDep, authenticator
from stratuslab.db import models
from stratuslab.db.models import utcnow
from stratuslab.schemas.identity import (
    IdentityLink,
    User,
    UserCreate,
    UserIdentity,
    UserUpdate,
)
from stratuslab.services import quotas, users

router = APIRouter(prefix="/users", tags=["users"])


def user_out(session: Session, row: models.User) -> User:
    item = User.model_validate(row)
    item.has_password = row.password_hash is not None
    item.projects = users.memberships(session, row.id)
    return item


@router.get("")
def list_users(ctx: CtxDep, _p: PrincipalDep) -> list[User]:
    with ctx.sessions() as s:
        return [user_out(s, u) for u in users.list_users(s)]


@router.post("", status_code=201)
def create_user(body: UserCreate, request: Request, ctx: CtxDep, _p: PrincipalDep) -> User:
    """Create a user (cloud admin): in ``project`` as a member, or in a new personal project."""
    auth = authenticator(request.app, ctx)
    with ctx.uow() as s:
        row = users.create_user(
            s,
            auth.passwords,
            name=body.name,
            email=body.email,
            full_name=body.full_name,
            password=body.password,
            cloud_admin=body.cloud_admin,
            project=body.project,
            limits=quotas.parse_limits(ctx.settings.default_project_quota),
        )
        return user_out(s, row)


@router.get("/{ref}")
def get_user(ref: str, ctx: CtxDep, principal: PrincipalDep) -> User:
    """A user: yourself (``me``), or anyone for a cloud admin."""
    with ctx.sessions() as s:
        return user_out(s, users.visible_user(s, principal, ref))


@router.patch("/{ref}")
def update_user(
    ref: str, body: UserUpdate, request: Request, ctx: CtxDep, principal: PrincipalDep
) -> User:
    """Change your e-mail, name or password (with ``current_password``); a cloud admin may
    also set anyone's password, status and admin flag."""
    auth = authenticator(request.app, ctx)
    with ctx.uow() as s:
        row = users.visible_user(s, principal, ref)
        users.update_user(
            s, auth.passwords, principal, row, **body.model_dump(exclude_unset=True), now=utcnow()
        )
        return user_out(s, row)


@router.delete("/{ref}", status_code=204)
def disable_user(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    """Disable a user and revoke their tokens (rows stay: they own resources and usage)."""
    with ctx.uow() as s:
        users.disable(s, principal, users.visible_user(s, principal, ref), now=utcnow())
    return Response(status_code=204)


@router.get("/{ref}/identities")
def list_identities(ref: str, ctx: CtxDep, principal: PrincipalDep) -> list[UserIdentity]:
    with ctx.sessions() as s:
        row = users.visible_user(s, principal, ref)
        return [UserIdentity.model_validate(i) for i in users.identities(s, row)]


@router.post("/{ref}/identities", status_code=201)
def link_identity(
    ref: str, body: IdentityLink, ctx: CtxDep, principal: PrincipalDep
) -> UserIdentity:
    """Link a certificate DN or an OIDC ``issuer#subject`` to a user (cloud admin)."""
    with ctx.uow() as s:
        row = users.visible_user(s, principal, ref)
        return UserIdentity.model_validate(users.link(s, row, kind=body.kind, subject=body.subject))


@router.delete("/{ref}/identities/{identity_id}", status_code=204)
def unlink_identity(ref: str, identity_id: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    with ctx.uow() as s:
        users.unlink(s, users.visible_user(s, principal, ref), identity_id)
    return Response(status_code=204)
