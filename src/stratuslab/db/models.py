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
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
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
    description: Mapped[str] = mapped_column(Text, default="")
    #: seconds an instance may run after it (re)started before it is stopped; None: no limit
    max_instance_lifetime: Mapped[int | None] = mapped_column(Integer, nullable=True)


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    default_project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    ssh_public_keys: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = _ts()
    #: sees and manages everything (with an unscoped credential or the ``admin`` scope);
    #: ``role`` above is kept for older code and mirrors it ("admin" / "member")
    cloud_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    #: argon2id PHC string; None: no password login (certificate, OIDC or tokens only)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    email: Mapped[str] = mapped_column(String(254), default="")
    full_name: Mapped[str] = mapped_column(String(200), default="")
    #: active | unverified (e-mail not confirmed) | pending (awaiting approval) | disabled
    status: Mapped[str] = mapped_column(String(16), default="active")


class ProjectMember(Base):
    """A user's role (admin, member, reader) in a project."""

    __tablename__ = "project_members"
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[datetime] = _ts()


class UserIdentity(Base):
    """An external identity linked to a user: a certificate DN or an OIDC issuer#subject."""

    __tablename__ = "user_identities"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # x509 | oidc
    #: canonical DN (x509) or ``issuer#subject`` (oidc)
    subject: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = _ts()
    __table_args__ = (UniqueConstraint("kind", "subject", name="uq_user_identities_subject"),)


class Quota(Base):
    """Limits of a project or a user, and the row creates lock (docs/identity.md)."""

    __tablename__ = "quotas"
    scope_type: Mapped[str] = mapped_column(String(8), primary_key=True)  # project | user
    scope_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: {"vcpus": 20, ...}; an absent counter is unlimited
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class Registration(Base):
    """A self-registration: e-mail check, then an admin's decision creates the user."""

    __tablename__ = "registrations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), index=True)
    email: Mapped[str] = mapped_column(String(254))
    full_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    #: sha256 of the secret in the e-mailed link
    email_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(TZDateTime())
    verified_at: Mapped[datetime | None] = _ts(nullable=True)
    #: pending_email | pending_approval | approved | rejected
    status: Mapped[str] = mapped_column(String(20), default="pending_email")
    #: the user made on approval
    user_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    decided_at: Mapped[datetime | None] = _ts(nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = _ts()


class AuditRecord(Base):
    """One mutating API call: who, what, when, from where, and the answer."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = _ts()
    user_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    #: the user name, or what a failed login claimed to be
    actor: Mapped[str] = mapped_column(String(255), default="")
    #: token id, DN or issuer#subject (never a secret)
    credential: Mapped[str] = mapped_column(String(1024), default="")
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(64), default="")
    project_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = _ts()
    expires_at: Mapped[datetime | None] = _ts(nullable=True)
    #: the ``<id>`` of ``stl_<id>_<secret>``; None for tokens made before identity (0004),
    #: whose ``token_hash`` is the SHA-256 of the whole token
    token_id: Mapped[str | None] = mapped_column(String(12), unique=True, index=True, nullable=True)
    #: space-separated scopes; None: unscoped (limited by roles alone)
    scopes: Mapped[str | None] = mapped_column(String(400), nullable=True)
    revoked_at: Mapped[datetime | None] = _ts(nullable=True)
    #: password | token | x509 | oidc: how the creator authenticated
    created_via: Mapped[str] = mapped_column(String(16), default="")


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
    #: private (owner and project admins) | project (its members) | public (everyone)
    visibility: Mapped[str] = mapped_column(String(16), default="project")
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
    #: admin-set (and join-time) labels read by requirement expressions: LABEL:gpu = "yes"
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    #: overcommit ratios; None: the cloud's default (ControllerSettings)
    cpu_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    ram_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: why the host is disabled, draining, offline or in error
    state_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    #: what the admin chose (enabled, disabled, draining); ``state`` is this unless the host
    #: is offline or in error, and returns to it when the host is back
    admin_state: Mapped[str] = mapped_column(
        String(16), default="enabled", server_default="enabled"
    )
    #: libvirt URI other hosts use to live-migrate to this one (None: no live migration)
    migration_uri: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = _ts()

    def bump(self) -> None:
        """Tell the host's agent that its desired state changed. The generation goes up in
        SQL (``desired_generation + 1``), so bumps by concurrent transactions never overwrite
        each other (the value is read again after the flush)."""
        self.desired_generation = Host.desired_generation + 1


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
    #: when the project's lifetime limit warning was sent for the current run
    lifetime_warned_at: Mapped[datetime | None] = _ts(nullable=True)
    #: scheduling: requirement expression (docs/scheduler.md) and (anti-)affinity groups
    requirements: Mapped[str | None] = mapped_column(Text, nullable=True)
    affinity_group: Mapped[str | None] = mapped_column(String(64), nullable=True)
    anti_affinity_group: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: what to do when its host fails: none, restart (from the image elsewhere), migrate
    ha_policy: Mapped[str] = mapped_column(String(8), default="none", server_default="none")
    #: since when it waits for a host (created, or put back by HA); None: placed
    pending_since: Mapped[datetime | None] = _ts(nullable=True)
    #: a migration in progress: {"mode", "from", "to", "phase", "image_id", ...}
    migration: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    __table_args__ = (
        UniqueConstraint("host_id", "ssh_port", name="uq_instances_host_port"),
        Index("ix_instances_project_status", "project_id", "status"),
        Index("ix_instances_created", "created_at", "id"),
        Index("ix_instances_project_created", "project_id", "created_at", "id"),
        # the few instances migrating (a desired-state read looks for those coming to its host)
        Index(
            "ix_instances_migrating",
            "id",
            postgresql_where=text("migration IS NOT NULL"),
            sqlite_where=text("migration IS NOT NULL"),
        ),
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


class OperationTarget(Base):
    """An instance an operation waits on: a report finds the operations its instances
    finish by this index, not by reading every open operation's target list."""

    __tablename__ = "operation_targets"
    target_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    operation_id: Mapped[str] = mapped_column(
        ForeignKey("operations.id", ondelete="CASCADE"), primary_key=True
    )


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


class Volume(Base):
    """A persistent disk (docs/volumes.md): kept in the volume pool of ``host_id``'s agent.

    ``generation`` is bumped whenever the node must do something (create, grow, delete);
    the agent reports ``observed_generation``. Deleted rows stay (status ``deleted``).
    """

    __tablename__ = "volumes"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: data | bootable | volatile (made and deleted with an instance) | root (a deleted
    #: instance's root disk, kept in quarantine)
    kind: Mapped[str] = mapped_column(String(16), default="data")
    #: private | project | public (public: others may attach it; only the owner deletes)
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    #: creating | available | attaching | in-use | detaching | deleting | deleted | error |
    #: quarantined
    state: Mapped[str] = mapped_column(String(16), default="creating")
    status_reason: Mapped[str] = mapped_column(Text, default="")
    #: snapshots are read-only (several instances may attach them, read-only)
    readonly: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the volume this one was cloned or snapshotted from
    parent_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    #: the image a bootable volume was made from
    image_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    #: the instance a volatile or root volume belongs (belonged) to
    instance_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True, index=True)
    #: how the node makes it: {"image": {...}} | {"clone_of": id} | {"snapshot_of": id} |
    #: {"instance_root": id}; empty: blank
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    generation: Mapped[int] = mapped_column(BigInteger, default=1)
    observed_generation: Mapped[int] = mapped_column(BigInteger, default=0)
    #: the state to return to when quarantine is released
    quarantined_from: Mapped[str] = mapped_column(String(16), default="")
    quarantine_until: Mapped[datetime | None] = _ts(nullable=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    created_at: Mapped[datetime] = _ts()
    updated_at: Mapped[datetime] = _ts()
    deleted_at: Mapped[datetime | None] = _ts(nullable=True)


class VolumeAttachment(Base):
    """A volume on an instance at ``index`` (target ``vdc`` + index): attaching ->
    attached -> detaching, then the row goes."""

    __tablename__ = "volume_attachments"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    readonly: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="attaching")
    created_at: Mapped[datetime] = _ts()
    __table_args__ = (
        UniqueConstraint("instance_id", "index", name="uq_volume_attachments_index"),
        UniqueConstraint("instance_id", "volume_id", name="uq_volume_attachments_volume"),
    )


# -- virtual networks (docs/networking.md) ---------------------------------------------------


class Network(Base):
    """A virtual network: addresses (IPAM), class, driver, and who may attach to it."""

    __tablename__ = "networks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    #: public | local | private (original StratusLab address classes)
    address_class: Mapped[str] = mapped_column(String(8))
    #: bridge | vxlan
    driver: Mapped[str] = mapped_column(String(8), default="bridge")
    cidr4: Mapped[str | None] = mapped_column(String(18), nullable=True)
    gateway4: Mapped[str | None] = mapped_column(String(15), nullable=True)
    #: ["FIRST-LAST", ...]
    pools: Mapped[list[Any]] = mapped_column(JSON, default=list)
    cidr6: Mapped[str | None] = mapped_column(String(43), nullable=True)
    gateway6: Mapped[str | None] = mapped_column(String(39), nullable=True)
    dns: Mapped[list[Any]] = mapped_column(JSON, default=list)
    mtu: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: host interface the bridge is joined to (optionally tagged), None: host-local bridge
    uplink: Mapped[str | None] = mapped_column(String(15), nullable=True)
    vlan: Mapped[int | None] = mapped_column(Integer, nullable=True)
    vni: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    #: public: every project may attach; project: the owning project only
    visibility: Mapped[str] = mapped_column(String(16), default="project")
    description: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    created_at: Mapped[datetime] = _ts()


class NetworkLease(Base):
    """Who held which addresses when, kept forever (no foreign keys: outlives everything)."""

    __tablename__ = "network_leases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    network_id: Mapped[str] = mapped_column(String(36), index=True)
    network_name: Mapped[str] = mapped_column(String(63))
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    instance_name: Mapped[str] = mapped_column(String(64), default="")
    project_id: Mapped[str] = mapped_column(String(36))
    mac: Mapped[str] = mapped_column(String(17))
    ipv4: Mapped[str | None] = mapped_column(String(15), nullable=True, index=True)
    ipv6: Mapped[str | None] = mapped_column(String(39), nullable=True)
    since: Mapped[datetime] = _ts()
    until: Mapped[datetime | None] = _ts(nullable=True)


class SecurityGroup(Base):
    """A project's named set of allow rules, applied per instance interface."""

    __tablename__ = "security_groups"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    created_at: Mapped[datetime] = _ts()
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_security_groups_name"),)


class SecurityRule(Base):
    __tablename__ = "security_rules"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    group_id: Mapped[str] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"), index=True
    )
    #: ingress | egress
    direction: Mapped[str] = mapped_column(String(8))
    #: any | tcp | udp | icmp
    protocol: Mapped[str] = mapped_column(String(8), default="any")
    port_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port_max: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: a CIDR, or None (anywhere) unless ``remote_group_id`` names a group
    remote_cidr: Mapped[str | None] = mapped_column(String(43), nullable=True)
    remote_group_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = _ts()


class InstanceNic(Base):
    """An instance's interface on a network, with its current lease."""

    __tablename__ = "instance_nics"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    #: 0, 1, ...: guest order and the host tap name (``tap_name(instance, index)``)
    index: Mapped[int] = mapped_column(Integer)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    ipv4: Mapped[str | None] = mapped_column(String(15), nullable=True)
    ipv6: Mapped[str | None] = mapped_column(String(39), nullable=True)
    security_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("security_groups.id"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = _ts()
    __table_args__ = (
        UniqueConstraint("instance_id", "index", name="uq_instance_nics_index"),
        UniqueConstraint("network_id", "ipv4", name="uq_instance_nics_ipv4"),
        UniqueConstraint("network_id", "ipv6", name="uq_instance_nics_ipv6"),
    )


class PortForward(Base):
    """PAT: a port of the instance's host forwarded to a port of one of its NICs."""

    __tablename__ = "port_forwards"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    nic_id: Mapped[str] = mapped_column(ForeignKey("instance_nics.id", ondelete="CASCADE"))
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"))
    protocol: Mapped[str] = mapped_column(String(3), default="tcp")
    host_port: Mapped[int] = mapped_column(Integer)
    target_port: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = _ts()
    __table_args__ = (
        UniqueConstraint("host_id", "protocol", "host_port", name="uq_port_forwards_host_port"),
    )
