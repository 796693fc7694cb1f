"""Projects and their members (admin, member, reader)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratuslab.db.models import (
    ApiToken,
    Flavor,
    Image,
    Instance,
    Operation,
    Project,
    ProjectMember,
    Quota,
    User,
)
from stratuslab.errors import Conflict, InvalidInput, NotFound
from stratuslab.identity.authz import Action
from stratuslab.identity.principal import Principal
from stratuslab.identity.quotas import Limits
from stratuslab.services import access, quotas
from stratuslab.types import ImageStatus, InstanceStatus, Role


def list_projects(session: Session, principal: Principal) -> list[Project]:
    stmt = select(Project).where(access.projects_visible(principal)).order_by(Project.name)
    return list(session.scalars(stmt))


def create_project(
    session: Session,
    *,
    name: str,
    description: str = "",
    max_instance_lifetime: int | None = None,
    limits: Limits,
) -> Project:
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(
            f"a project named {name!r} already exists",
            hint="choose another name",
            code="duplicate_name",
        )
    project = Project(
        name=name, description=description, max_instance_lifetime=max_instance_lifetime
    )
    session.add(project)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a project named {name!r} already exists", hint="choose another") from exc
    quotas.create_row(session, quotas.PROJECT, project.id, limits=quotas.stored(limits))
    return project


def update_project(
    project: Project, *, description: str | None, max_instance_lifetime: int | None
) -> Project:
    if description is not None:
        project.description = description
    if max_instance_lifetime is not None:
        project.max_instance_lifetime = max_instance_lifetime or None
    return project


def delete_project(session: Session, principal: Principal, ref: str) -> None:
    """Delete an empty project (no live instances or images; deleted rows are kept for
    accounting, so a project that ever held resources stays)."""
    project = access.find_project(session, principal, ref, Action.DELETE)
    live = session.scalar(
        select(func.count(Instance.id)).where(
            Instance.project_id == project.id, Instance.status != InstanceStatus.DELETED.value
        )
    )
    images = session.scalar(
        select(func.count(Image.id)).where(
            Image.project_id == project.id, Image.status != ImageStatus.DELETED.value
        )
    )
    if live or images:
        raise Conflict(
            f"project {project.name!r} still has {live} instance(s) and {images} image(s)",
            hint="delete them first",
            code="project_not_empty",
        )
    history = any(
        session.scalar(select(model.id).where(model.project_id == project.id).limit(1))
        for model in (Instance, Image, Operation, Flavor)
    )
    defaults = session.scalar(
        select(User.name).where(User.default_project_id == project.id).limit(1)
    )
    if history or defaults is not None:
        raise Conflict(
            f"project {project.name!r} has history (accounting rows) or is the default "
            f"project of a user{f' ({defaults})' if defaults else ''}",
            hint="remove its members instead; the project stays for accounting",
            code="project_has_history",
        )
    session.query(ProjectMember).filter_by(project_id=project.id).delete()
    session.query(ApiToken).filter_by(project_id=project.id).delete()
    session.query(Quota).filter_by(scope_type=quotas.PROJECT, scope_id=project.id).delete()
    session.delete(project)


def members(session: Session, project: Project) -> list[tuple[str, str, str]]:
    """(user id, user name, role) of every member."""
    rows = session.execute(
        select(User.id, User.name, ProjectMember.role)
        .join(ProjectMember, ProjectMember.user_id == User.id)
        .where(ProjectMember.project_id == project.id)
        .order_by(User.name)
    )
    return list(rows)


def find_user(session: Session, ref: str) -> User:
    user = session.scalar(select(User).where((User.id == ref) | (User.name == ref)))
    if user is None:
        raise NotFound(
            f"user {ref!r} does not exist",
            hint="ask a cloud administrator (`stratus user list`)",
            code="user_not_found",
        )
    return user


def set_member(session: Session, project: Project, user: User, role: str) -> ProjectMember:
    try:
        value = Role(role)
    except ValueError:
        raise InvalidInput(
            f"unknown role {role!r}", hint="roles: admin, member, reader", code="bad_role"
        ) from None
    row = session.get(ProjectMember, (project.id, user.id))
    if row is None:
        row = ProjectMember(project_id=project.id, user_id=user.id, role=value.value)
        session.add(row)
    else:
        if row.role == Role.ADMIN.value and value is not Role.ADMIN:
            _keep_an_admin(session, project, user)
        row.role = value.value
    session.flush()
    return row


def remove_member(session: Session, project: Project, user: User) -> None:
    row = session.get(ProjectMember, (project.id, user.id))
    if row is None:
        raise NotFound(
            f"user {user.name!r} is not a member of project {project.name!r}",
            hint="`stratus project members PROJECT`",
            code="member_not_found",
        )
    if row.role == Role.ADMIN.value:
        _keep_an_admin(session, project, user)
    session.delete(row)


def _keep_an_admin(session: Session, project: Project, leaving: User) -> None:
    others = session.scalar(
        select(func.count()).where(
            ProjectMember.project_id == project.id,
            ProjectMember.role == Role.ADMIN.value,
            ProjectMember.user_id != leaving.id,
        )
    )
    if not others:
        raise Conflict(
            f"{leaving.name!r} is the last admin of project {project.name!r}",
            hint="make another member admin first",
            code="last_admin",
        )
