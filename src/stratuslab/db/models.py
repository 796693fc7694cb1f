"""Rows. Every owned resource carries ``owner_id`` and ``project_id`` from day one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class TZDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes, on SQLite (which stores them naive) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _ts(nullable: bool = False) -> Any:
    if nullable:
        return mapped_column(TZDateTime(), nullable=True)
    return mapped_column(TZDateTime(), default=utcnow, nullable=False)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _ts()


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    default_project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    ssh_public_keys: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = _ts()


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = _ts()
    expires_at: Mapped[datetime | None] = _ts(nullable=True)


class Flavor(Base):
    __tablename__ = "flavors"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    swap_mib: Mapped[int] = mapped_column(Integer, default=0)
    disk_gib: Mapped[int] = mapped_column(Integer, default=0)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    created_at: Mapped[datetime] = _ts()


class Image(Base):
    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    virtual_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="available")
    path: Mapped[str] = mapped_column(Text)
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    #: the instance whose root disk is being saved as this image (status "saving")
    source_instance_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    #: unsigned marketplace metadata generated for a saved image (a draft until signed)
    metadata_draft: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: a marketplace image: its 27-character identifier; nodes fetch it from ``locations``
    marketplace_id: Mapped[str | None] = mapped_column(String(27), nullable=True, index=True)
    locations: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    compression: Mapped[str | None] = mapped_column(String(8), nullable=True)
    sha512: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    created_at: Mapped[datetime] = _ts()
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_images_project_name"),)


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="enabled")
    hypervisor: Mapped[str] = mapped_column(String(16), default="qemu")
    arch: Mapped[str] = mapped_column(String(32), default="x86_64")
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    disk_gib: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: bumped whenever the desired state of any instance on this host changes
    desired_generation: Mapped[int] = mapped_column(BigInteger, default=0)
    last_heartbeat: Mapped[datetime | None] = _ts(nullable=True)
    agent_version: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = _ts()


class JoinToken(Base):
    __tablename__ = "join_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(TZDateTime())
    used_at: Mapped[datetime | None] = _ts(nullable=True)
    host_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = _ts()


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    flavor_name: Mapped[str] = mapped_column(String(64))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer, default=0)
    #: everything the agent needs that is not a column: ssh keys, user data, ...
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    desired: Mapped[str] = mapped_column(String(16), default="running")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    status_reason: Mapped[str] = mapped_column(Text, default="")
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True, index=True)
    ssh_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=1)
    observed_generation: Mapped[int] = mapped_column(BigInteger, default=0)
    reboot_seq: Mapped[int] = mapped_column(Integer, default=0)
    reboot_hard: Mapped[bool] = mapped_column(Boolean, default=False)
    console_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    created_at: Mapped[datetime] = _ts()
    updated_at: Mapped[datetime] = _ts()
    started_at: Mapped[datetime | None] = _ts(nullable=True)
    deleted_at: Mapped[datetime | None] = _ts(nullable=True)
    __table_args__ = (
        UniqueConstraint("host_id", "ssh_port", name="uq_instances_host_port"),
        Index("ix_instances_project_status", "project_id", "status"),
    )


class Operation(Base):
    __tablename__ = "operations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="running")
    target_type: Mapped[str] = mapped_column(String(32), default="instance")
    target_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    #: what the targets must reach: {"status": [...], "generation": {id: n}}
    expect: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    progress: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    created_at: Mapped[datetime] = _ts()
    finished_at: Mapped[datetime | None] = _ts(nullable=True)
    __table_args__ = (Index("ix_operations_status", "status"),)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = _ts()
    kind: Mapped[str] = mapped_column(String(48))
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    instance_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    host_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
