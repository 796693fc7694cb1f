"""API tokens: password login, new tokens for the caller, listing, revocation.

A password is checked once, at ``POST /auth/tokens``; what comes back is an ``stl_`` token
(scoped if asked, expiring after ``login_token_lifetime``) that the client sends from then
on. Wrong user names and wrong passwords get the same answer and the same cost; repeated
failures are refused for a while (HTTP 429) before any hashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import ApiToken, Project, User
from stratuslab.errors import NotFound, RateLimited, Unauthorized
from stratuslab.identity import tokens as pure
from stratuslab.identity.passwords import (
    AccountLookup,
    PasswordAccount,
    PasswordLogin,
    authenticate_password,
)
from stratuslab.identity.principal import AuthMethod, Principal
from stratuslab.identity.scopes import parse_scopes
from stratuslab.services.auth import ACTIVE, Authenticator, expiry, issue_token, roles_of
from stratuslab.types import Role


@dataclass(frozen=True)
class Created:
    token: str
    row: ApiToken


def verify_login(
    auth: Authenticator,
    *,
    username: str,
    password: str,
    address: str,
    lookup: AccountLookup,
) -> PasswordLogin:
    """Check a user name and password (rate-limited, no user enumeration).

    Call it outside any transaction: an argon2 verification takes a good fraction of a
    second, and on SQLite every transaction holds the write lock.
    """
    if "password" not in auth.methods:
        raise Unauthorized(
            "password login is not enabled on this cloud",
            hint="use an API token, a certificate or your identity provider's token",
            code="method_disabled",
        )
    try:
        return authenticate_password(
            username,
            password,
            lookup=lookup,
            passwords=auth.passwords,
            limiter=auth.limiter,
            address=address,
        )
    except Unauthorized as exc:
        if exc.code == "too_many_attempts":
            raise RateLimited(exc.message, hint=exc.hint, details=exc.details) from None
        raise


def login_token(
    session: Session,
    auth: Authenticator,
    checked: PasswordLogin,
    *,
    project: str | None,
    scopes: list[str] | None,
    expires_in: float | None,
    description: str,
) -> Created:
    """The token a successful password login gets (and the rehashed password, if due)."""
    user = session.get(User, checked.account.user_id)
    assert user is not None
    if checked.new_hash is not None:
        user.password_hash = checked.new_hash
    principal = Principal(
        user_id=user.id,
        project_id=user.default_project_id,
        roles=roles_of(session, user.id),
        cloud_admin=user.cloud_admin,
        scopes=None,
        method=AuthMethod.PASSWORD,
        credential_id=f"password:{user.name}",
    )
    return create(
        session,
        auth,
        principal,
        project=project,
        scopes=scopes,
        expires_in=expires_in,
        description=description or "stratus login",
        via="password",
    )


def account(session: Session, username: str) -> PasswordAccount | None:
    """What the login check needs to know about a user name (None: no such user)."""
    user = session.scalar(select(User).where(User.name == username.strip()))
    if user is None:
        return None
    return PasswordAccount(
        user_id=user.id,
        username=user.name,
        password_hash=user.password_hash,
        active=user.status == ACTIVE,
    )


def create(
    session: Session,
    auth: Authenticator,
    principal: Principal,
    *,
    project: str | None,
    scopes: list[str] | None,
    expires_in: float | None,
    description: str,
    via: str = "",
) -> Created:
    """A new token for the caller, in ``project`` (default: the acting one), with no more
    power than the caller's credential."""
    requested = None if scopes is None else parse_scopes(scopes)
    pure.check_new_scopes(principal, requested)
    target = _target_project(session, principal, project)
    user = session.get(User, principal.user_id)
    assert user is not None
    settings = auth.settings
    expires_at = expiry(
        expires_in,
        default=settings.login_token_lifetime if via == "password" else 0.0,
        cap=settings.token_max_lifetime,
    )
    if principal.method is AuthMethod.TOKEN:
        expires_at = _not_after_creator(session, principal, expires_at)
    token = issue_token(
        session,
        user,
        target,
        description,
        scopes=requested,
        expires_at=expires_at,
        via=via or principal.method.value,
    )
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_id == pure.parse_token(token).token_id)
    )
    assert row is not None
    return Created(token, row)


def _target_project(session: Session, principal: Principal, ref: str | None) -> Project:
    project_id = principal.project_id
    if ref:
        found = session.scalar(select(Project).where((Project.id == ref) | (Project.name == ref)))
        if found is None or (found.id not in principal.roles and not principal.is_admin):
            raise NotFound(
                f"project {ref!r} does not exist",
                hint="list your projects with `stratus project list`",
                code="project_not_found",
            )
        return found
    if project_id not in principal.roles and not principal.is_admin:
        if not principal.roles:
            raise NotFound(
                "you are not a member of any project",
                hint="ask a project admin to add you",
                code="project_not_found",
            )
        project_id = sorted(principal.roles)[0]
    project = session.get(Project, project_id)
    assert project is not None
    return project


def _not_after_creator(
    session: Session, principal: Principal, expires_at: datetime | None
) -> datetime | None:
    """A token made with a token does not outlive it."""
    token_id = principal.credential_id.removeprefix("token:")
    creator = session.scalar(select(ApiToken.expires_at).where(ApiToken.token_id == token_id))
    if creator is None:
        return expires_at
    return creator if expires_at is None else min(expires_at, creator)


def list_tokens(
    session: Session, principal: Principal, *, user: str | None = None, include_revoked: bool
) -> list[tuple[ApiToken, str, str]]:
    """The caller's tokens (a cloud admin may name another user): (row, user, project)."""
    user_id = principal.user_id
    if user is not None:
        principal.require_admin("listing another user's tokens")
        found = session.scalar(select(User.id).where((User.id == user) | (User.name == user)))
        if found is None:
            raise NotFound(f"user {user!r} does not exist", hint="`stratus user list`")
        user_id = found
    stmt = (
        select(ApiToken, User.name, Project.name)
        .join(User, User.id == ApiToken.user_id)
        .join(Project, Project.id == ApiToken.project_id)
        .where(ApiToken.user_id == user_id)
        .order_by(ApiToken.created_at)
    )
    if not include_revoked:
        stmt = stmt.where(ApiToken.revoked_at.is_(None))
    return [(row, uname, pname) for row, uname, pname in session.execute(stmt)]


def revoke(session: Session, principal: Principal, token_id: str, *, now: datetime) -> ApiToken:
    """Revoke one of your tokens (a cloud admin: anyone's). Others' are 'not found'."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_id == token_id))
    if row is None or (row.user_id != principal.user_id and not principal.is_admin):
        raise NotFound(
            f"token {token_id!r} does not exist",
            hint="list your tokens with `stratus token list`",
            code="token_not_found",
        )
    if row.revoked_at is None:
        row.revoked_at = now
    return row


def describe_roles(session: Session, principal: Principal) -> dict[str, str]:
    """Project name -> role for a principal (``whoami``)."""
    if not principal.roles:
        return {}
    names = dict(
        session.execute(
            select(Project.id, Project.name).where(Project.id.in_(list(principal.roles)))
        ).all()
    )
    return {names.get(pid, pid): Role(role).value for pid, role in principal.roles.items()}
