"""Quotas of projects and users: ``/quotas``."""

from __future__ import annotations

from fastapi import APIRouter

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.identity.quotas import UNLIMITED, Limits, Usage
from stratuslab.schemas.identity import Quota, QuotaSet
from stratuslab.services import access, quotas, users

router = APIRouter(prefix="/quotas", tags=["quotas"])


def quota_out(scope: str, ident: str, name: str, limits: Limits, usage: Usage) -> Quota:
    return Quota(
        scope="project" if scope == quotas.PROJECT else "user",
        id=ident,
        name=name,
        limits=limits.as_dict(),
        usage=usage.as_dict(),
    )


@router.get("/projects/{ref}")
def show_project_quota(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Quota:
    """A project's limits and what it uses now (any member)."""
    with ctx.sessions() as s:
        project = access.find_project(s, principal, ref)
        limits = quotas.get_limits(s, quotas.PROJECT, project.id)
        if limits is None:
            limits = quotas.parse_limits(ctx.settings.default_project_quota)
        usage = quotas.usage(s, project_id=project.id)
        return quota_out(quotas.PROJECT, project.id, project.name, limits, usage)


@router.put("/projects/{ref}")
def set_project_quota(ref: str, body: QuotaSet, ctx: CtxDep, principal: PrincipalDep) -> Quota:
    """Change some limits of a project (cloud admin); -1 or null: no limit."""
    with ctx.uow() as s:
        project = access.find_project(s, principal, ref)
        base = quotas.parse_limits(ctx.settings.default_project_quota)
        limits = quotas.set_limits(
            s, quotas.PROJECT, project.id, body.model_dump(exclude_unset=True), base=base
        )
        usage = quotas.usage(s, project_id=project.id)
        return quota_out(quotas.PROJECT, project.id, project.name, limits, usage)


@router.get("/users/{ref}")
def show_user_quota(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Quota:
    """A user's own limits across all projects (yourself, or anyone for a cloud admin)."""
    with ctx.sessions() as s:
        user = users.visible_user(s, principal, ref)
        limits = quotas.get_limits(s, quotas.USER, user.id) or UNLIMITED
        return quota_out(quotas.USER, user.id, user.name, limits, quotas.usage(s, user_id=user.id))


@router.put("/users/{ref}")
def set_user_quota(ref: str, body: QuotaSet, ctx: CtxDep, principal: PrincipalDep) -> Quota:
    with ctx.uow() as s:
        user = users.visible_user(s, principal, ref)
        limits = quotas.set_limits(
            s, quotas.USER, user.id, body.model_dump(exclude_unset=True), base=UNLIMITED
        )
        return quota_out(quotas.USER, user.id, user.name, limits, quotas.usage(s, user_id=user.id))
