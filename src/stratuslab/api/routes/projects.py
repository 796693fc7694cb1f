"""Projects and their members: ``/projects``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.db import models
from stratuslab.identity.authz import Action
from stratuslab.identity.principal import Principal
from stratuslab.schemas.identity import Member, MemberSet, Project, ProjectCreate, ProjectUpdate
from stratuslab.services import access, projects, quotas

router = APIRouter(prefix="/projects", tags=["projects"])


def project_out(row: models.Project, principal: Principal) -> Project:
    item = Project.model_validate(row)
    role = principal.role_in(row.id)
    item.role = role.value if role is not None else None
    return item


@router.get("")
def list_projects(ctx: CtxDep, principal: PrincipalDep) -> list[Project]:
    """Your projects (a cloud admin: all)."""
    with ctx.sessions() as s:
        return [project_out(p, principal) for p in projects.list_projects(s, principal)]


@router.post("", status_code=201)
def create_project(body: ProjectCreate, ctx: CtxDep, principal: PrincipalDep) -> Project:
    """Create a project (cloud admin); it gets the cloud's default quota."""
    with ctx.uow() as s:
        row = projects.create_project(
            s,
            name=body.name,
            description=body.description,
            max_instance_lifetime=body.max_instance_lifetime,
            limits=quotas.parse_limits(ctx.settings.default_project_quota),
        )
        return project_out(row, principal)


@router.get("/{ref}")
def get_project(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Project:
    with ctx.sessions() as s:
        return project_out(access.find_project(s, principal, ref), principal)


@router.patch("/{ref}")
def update_project(ref: str, body: ProjectUpdate, ctx: CtxDep, principal: PrincipalDep) -> Project:
    """Change the description or the maximum instance lifetime (project admin)."""
    with ctx.uow() as s:
        row = access.find_project(s, principal, ref, Action.MANAGE)
        projects.update_project(
            row,
            description=body.description,
            max_instance_lifetime=body.max_instance_lifetime,
        )
        return project_out(row, principal)


@router.delete("/{ref}", status_code=204)
def delete_project(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    with ctx.uow() as s:
        projects.delete_project(s, principal, ref)
    return Response(status_code=204)


@router.get("/{ref}/members")
def list_members(ref: str, ctx: CtxDep, principal: PrincipalDep) -> list[Member]:
    with ctx.sessions() as s:
        row = access.find_project(s, principal, ref)
        return [
            Member(user_id=uid, user=name, role=role)
            for uid, name, role in projects.members(s, row)
        ]


@router.put("/{ref}/members/{user}")
def set_member(
    ref: str, user: str, body: MemberSet, ctx: CtxDep, principal: PrincipalDep
) -> Member:
    """Add a user to the project, or change their role (project admin)."""
    with ctx.uow() as s:
        row = access.find_project(s, principal, ref, Action.MANAGE)
        target = projects.find_user(s, user)
        member = projects.set_member(s, row, target, body.role)
        return Member(user_id=target.id, user=target.name, role=member.role)


@router.delete("/{ref}/members/{user}", status_code=204)
def remove_member(ref: str, user: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    with ctx.uow() as s:
        row = access.find_project(s, principal, ref, Action.MANAGE)
        projects.remove_member(s, row, projects.find_user(s, user))
    return Response(status_code=204)
