"""Wire types of identity: tokens, users, projects, members, quotas, usage, audit."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from stratuslab.schemas.common import Wire, WireIn

RoleName = Literal["admin", "member", "reader"]
USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TokenCreate(WireIn):
    """Password login (``username`` + ``password``), or a new token for the caller."""

    username: str | None = Field(default=None, max_length=255)
    password: str | None = Field(default=None, max_length=1024, repr=False)
    project: str | None = Field(default=None, description="project name or id to act in")
    scopes: list[str] | None = Field(
        default=None, description="e.g. ['compute:read']; absent: unscoped (roles alone)"
    )
    expires_in: float | None = Field(
        default=None, gt=0, description="seconds; absent: the cloud's default"
    )
    description: str = Field(default="", max_length=200)


class Token(Wire):
    """A token's record (never its secret)."""

    token_id: str
    user_id: str
    user: str = ""
    project_id: str
    project: str = ""
    scopes: list[str] | None
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None = None


class TokenCreated(Token):
    #: the token itself: shown once
    token: str


class WhoAmI(Wire):
    user_id: str
    user: str
    project_id: str
    project: str
    roles: dict[str, str]
    cloud_admin: bool
    admin: bool
    scopes: list[str] | None
    method: str
    credential: str


class UserCreate(WireIn):
    name: str = Field(pattern=USER_PATTERN)
    email: str = Field(default="", max_length=254)
    full_name: str = Field(default="", max_length=200)
    password: str | None = Field(default=None, max_length=1024, repr=False)
    cloud_admin: bool = False
    project: str | None = Field(
        default=None, description="project to join (as member); absent: a new personal project"
    )


class UserUpdate(WireIn):
    email: str | None = Field(default=None, max_length=254)
    full_name: str | None = Field(default=None, max_length=200)
    password: str | None = Field(default=None, max_length=1024, repr=False)
    current_password: str | None = Field(
        default=None, max_length=1024, repr=False, description="needed to change your own"
    )
    status: Literal["active", "disabled"] | None = None
    cloud_admin: bool | None = None
    default_project: str | None = None


class User(Wire):
    id: str
    name: str
    email: str
    full_name: str
    status: str
    cloud_admin: bool
    has_password: bool = False
    default_project_id: str
    projects: dict[str, str] = Field(default_factory=dict, description="project name -> role")
    created_at: datetime


class IdentityLink(WireIn):
    kind: Literal["x509", "oidc"]
    subject: str = Field(
        min_length=1, max_length=1024, description="certificate DN, or issuer#subject (OIDC)"
    )


class UserIdentity(Wire):
    id: str
    user_id: str
    kind: str
    subject: str
    created_at: datetime


class ProjectCreate(WireIn):
    name: str = Field(pattern=PROJECT_PATTERN)
    description: str = Field(default="", max_length=2000)
    max_instance_lifetime: int | None = Field(default=None, gt=0, description="seconds")


class ProjectUpdate(WireIn):
    description: str | None = Field(default=None, max_length=2000)
    max_instance_lifetime: int | None = Field(
        default=None, ge=0, description="seconds; 0 removes the limit"
    )


class Project(Wire):
    id: str
    name: str
    description: str
    max_instance_lifetime: int | None
    role: str | None = Field(default=None, description="your role in it")
    created_at: datetime


class MemberSet(WireIn):
    role: RoleName = "member"


class Member(Wire):
    user_id: str
    user: str
    role: str


class QuotaSet(WireIn):
    """Counters to change; -1 or null: no limit."""

    instances: int | None = Field(default=None, ge=-1)
    vcpus: int | None = Field(default=None, ge=-1)
    ram_mib: int | None = Field(default=None, ge=-1)
    volumes: int | None = Field(default=None, ge=-1)
    volume_gib: int | None = Field(default=None, ge=-1)
    public_addresses: int | None = Field(default=None, ge=-1)
    images: int | None = Field(default=None, ge=-1)


class Quota(Wire):
    scope: Literal["project", "user"]
    id: str
    name: str
    #: counter -> limit (null: unlimited)
    limits: dict[str, int | None]
    usage: dict[str, int]


class UsageRecord(Wire):
    instance_id: str
    name: str
    project_id: str
    user_id: str
    host: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    image_id: str
    wall_seconds: float
    vcpu_hours: float
    ram_gb_hours: float
    status: str
    first_started: datetime | None
    deleted_at: datetime | None


class AuditRecord(Wire):
    id: int
    time: datetime
    user_id: str | None
    actor: str
    credential: str
    method: str
    path: str
    status: int
    source: str
    project_id: str | None
    duration_ms: float


class RegistrationCreate(WireIn):
    username: str = Field(pattern=USER_PATTERN)
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(max_length=1024, repr=False)
    full_name: str = Field(default="", max_length=200)


class RegistrationDecision(WireIn):
    project: str | None = Field(
        default=None, description="project to join; absent: a new project named after the user"
    )
    role: RoleName = "member"
    reason: str = Field(default="", max_length=2000)


class Registration(Wire):
    id: str
    user_id: str
    user: str = ""
    email: str = ""
    status: str
    created_at: datetime
    verified_at: datetime | None
    decided_at: datetime | None
    reason: str


class Accepted(Wire):
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
