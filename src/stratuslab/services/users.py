"""Users: accounts, passwords, linked certificate DNs and OIDC identities.

Users are never deleted (their rows own resources and accounting records): "deleting" one
disables it and revokes its tokens.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratuslab.db.models import ApiToken, Project, ProjectMember, User, UserIdentity
from stratuslab.errors import Conflict, Forbidden, InvalidInput, NotFound
from stratuslab.identity.dn import canonical_dn
from stratuslab.identity.passwords import Passwords, check_new_password
from stratuslab.identity.principal import Principal
from stratuslab.identity.quotas import Limits
from stratuslab.services import projects
from stratuslab.types import Role


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def memberships(session: Session, user_id: str) -> dict[str, str]:
    """Project name -> role."""
    rows = session.execute(
        select(Project.name, ProjectMember.role)
        .join(ProjectMember, ProjectMember.project_id == Project.id)
        .where(ProjectMember.user_id == user_id)
    )
    return {str(name): str(role) for name, role in rows}


def create_user(
    session: Session,
    passwords: Passwords,
    *,
    name: str,
    email: str = "",
    full_name: str = "",
    password: str | None = None,
    password_hash: str | None = None,
    cloud_admin: bool = False,
    project: str | None = None,
    role: Role = Role.MEMBER,
    status: str = "active",
    limits: Limits,
) -> User:
    """A user in ``project`` (with ``role``), or in a new project named after them (admin)."""
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(
            f"a user named {name!r} already exists", hint="choose another name", code="user_exists"
        )
    if password is not None:
        check_new_password(password, username=name)
    if project is not None:
        target = session.scalar(
            select(Project).where((Project.id == project) | (Project.name == project))
        )
        if target is None:
            raise NotFound(
                f"project {project!r} does not exist",
                hint="`stratus project list`",
                code="project_not_found",
            )
    else:
        target = projects.create_project(
            session,
            name=_free_project_name(session, name),
            description=f"{name}'s project",
            limits=limits,
        )
        role = Role.ADMIN
    user = User(
        name=name,
        email=email,
        full_name=full_name,
        role=Role.ADMIN.value if cloud_admin else Role.MEMBER.value,
        cloud_admin=cloud_admin,
        password_hash=password_hash if password is None else passwords.hash(password),
        default_project_id=target.id,
        status=status,
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a user named {name!r} already exists", hint="choose another") from exc
    session.add(ProjectMember(project_id=target.id, user_id=user.id, role=role.value))
    session.flush()
    return user


def _free_project_name(session: Session, wanted: str) -> str:
    name, n = wanted, 1
    while session.scalar(select(Project.id).where(Project.name == name)) is not None:
        n += 1
        name = f"{wanted}-{n}"
    return name


def visible_user(session: Session, principal: Principal, ref: str) -> User:
    """Yourself, or anyone for a cloud admin; others are 'not found'."""
    if ref in ("me", "self"):
        ref = principal.user_id
    user = session.scalar(select(User).where((User.id == ref) | (User.name == ref)))
    if user is None or (user.id != principal.user_id and not principal.is_admin):
        raise NotFound(
            f"user {ref!r} does not exist",
            hint="`stratus user show me` shows your own account",
            code="user_not_found",
        )
    return user


def update_user(
    session: Session,
    passwords: Passwords,
    principal: Principal,
    user: User,
    *,
    email: str | None = None,
    full_name: str | None = None,
    password: str | None = None,
    current_password: str | None = None,
    status: str | None = None,
    cloud_admin: bool | None = None,
    default_project: str | None = None,
    now: datetime,
) -> User:
    admin = principal.is_admin
    if (status is not None or cloud_admin is not None) and not admin:
        raise Forbidden(
            "only cloud administrators change a user's status or admin flag",
            hint="ask a cloud administrator",
        )
    if email is not None:
        user.email = email
    if full_name is not None:
        user.full_name = full_name
    if password is not None:
        _change_password(passwords, principal, user, password, current_password)
    if status is not None:
        user.status = status
        if status != "active":
            revoke_all(session, user.id, now=now)
    if cloud_admin is not None:
        if not cloud_admin and user.id == principal.user_id:
            raise Conflict("you cannot remove your own admin flag", hint="ask another admin")
        user.cloud_admin = cloud_admin
        user.role = Role.ADMIN.value if cloud_admin else Role.MEMBER.value
    if default_project is not None:
        found = session.scalar(
            select(Project.id).where(
                (Project.id == default_project) | (Project.name == default_project)
            )
        )
        member = found is not None and session.get(ProjectMember, (found, user.id)) is not None
        if found is None or not member:
            raise NotFound(
                f"project {default_project!r} does not exist (or the user is not a member)",
                hint="`stratus project list`",
                code="project_not_found",
            )
        user.default_project_id = found
    return user


def _change_password(
    passwords: Passwords,
    principal: Principal,
    user: User,
    password: str,
    current: str | None,
) -> None:
    if not principal.is_admin or principal.user_id == user.id:
        # your own password: prove you know the current one (a stolen token is not enough)
        ok = user.password_hash is None or (
            current is not None and passwords.verify(user.password_hash, current)
        )
        if not ok:
            raise Forbidden(
                "the current password is wrong",
                hint="give current_password (`stratus user set-password` asks for it)",
                code="bad_current_password",
            )
    check_new_password(password, username=user.name)
    user.password_hash = passwords.hash(password)


def revoke_all(session: Session, user_id: str, *, now: datetime) -> None:
    session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def disable(session: Session, principal: Principal, user: User, *, now: datetime) -> None:
    if user.id == principal.user_id:
        raise Conflict("you cannot disable yourself", hint="ask another cloud administrator")
    user.status = "disabled"
    revoke_all(session, user.id, now=now)


def identities(session: Session, user: User) -> list[UserIdentity]:
    return list(
        session.scalars(
            select(UserIdentity)
            .where(UserIdentity.user_id == user.id)
            .order_by(UserIdentity.created_at)
        )
    )


def link(session: Session, user: User, *, kind: str, subject: str) -> UserIdentity:
    """Link a certificate DN (any spelling; stored canonical) or an OIDC issuer#subject."""
    if kind == "x509":
        subject = canonical_dn(subject)
    elif "#" not in subject:
        raise InvalidInput(
            "an OIDC identity is written issuer#subject",
            hint="e.g. https://aai.example.org/#0123-abcd (the token's iss and sub claims)",
        )
    taken = session.scalar(
        select(UserIdentity).where(UserIdentity.kind == kind, UserIdentity.subject == subject)
    )
    if taken is not None:
        raise Conflict(
            f"this {kind} identity is already linked to a user",
            hint="unlink it first",
            code="identity_linked",
        )
    row = UserIdentity(user_id=user.id, kind=kind, subject=subject)
    session.add(row)
    session.flush()
    return row


def unlink(session: Session, user: User, identity_id: str) -> None:
    row = session.get(UserIdentity, identity_id)
    if row is None or row.user_id != user.id:
        raise NotFound(
            f"identity {identity_id!r} does not exist",
            hint="`stratus user identities USER`",
            code="identity_not_found",
        )
    session.delete(row)
