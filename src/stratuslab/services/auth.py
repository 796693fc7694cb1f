"""Who is calling: API tokens for users, credentials for node agents.

The identity issue extends this (passwords, X.509, OIDC, roles per project); every route
already goes through :func:`authenticate_user` or :func:`authenticate_host`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import ApiToken, Host, Project, User
from stratuslab.errors import Forbidden, Unauthorized
from stratuslab.types import Role


@dataclass(frozen=True)
class Principal:
    user_id: str
    project_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require_admin(self, action: str) -> None:
        if not self.is_admin:
            raise Forbidden(
                f"{action} needs the admin role",
                hint="ask a cloud administrator, or use an admin token",
            )


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_NO_TOKEN = Unauthorized(
    "no valid credentials were given",
    hint="pass a token with `Authorization: Bearer TOKEN` (`stratus up` saves one for the "
    "local cloud in ~/.config/stratuslab/config.toml)",
)


def authenticate_user(session: Session, token: str | None) -> Principal:
    if not token:
        raise _NO_TOKEN
    row = session.execute(
        select(ApiToken, User.role)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == hash_secret(token))
    ).first()
    if row is None:
        raise _NO_TOKEN
    api_token, role = row
    if api_token.expires_at is not None and api_token.expires_at < datetime.now(UTC):
        raise Unauthorized("this token has expired", hint="create a new token")
    return Principal(user_id=api_token.user_id, project_id=api_token.project_id, role=Role(role))


def authenticate_host(session: Session, credential: str | None) -> Host:
    if not credential:
        raise Unauthorized(
            "node agents must send their credential", hint="join the host with a join token"
        )
    host = session.scalar(select(Host).where(Host.credential_hash == hash_secret(credential)))
    if host is None:
        raise Unauthorized(
            "unknown node credential",
            hint="the host was removed or its credential is wrong; join it again with "
            "`stratus-node --join URL TOKEN`",
        )
    return host


def ensure_admin(session: Session) -> tuple[User, Project]:
    """The all-in-one admin user and project (created once)."""
    user = session.scalar(select(User).where(User.name == "admin"))
    if user is not None:
        project = session.get(Project, user.default_project_id)
        assert project is not None
        return user, project
    project = Project(name="admin")
    session.add(project)
    session.flush()
    user = User(name="admin", role=Role.ADMIN.value, default_project_id=project.id)
    session.add(user)
    session.flush()
    return user, project


def issue_token(session: Session, user: User, project: Project, description: str) -> str:
    token = new_secret()
    session.add(
        ApiToken(
            user_id=user.id,
            project_id=project.id,
            token_hash=hash_secret(token),
            description=description,
        )
    )
    return token
