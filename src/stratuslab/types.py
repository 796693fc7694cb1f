"""Shared enums and small value objects used by every layer."""

from __future__ import annotations

from enum import StrEnum


class InstanceStatus(StrEnum):
    """Observed state of an instance (architecture guide section 5)."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"
    UNKNOWN = "unknown"


class DesiredState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


class PowerState(StrEnum):
    """What a compute driver sees of a domain."""

    RUNNING = "running"
    SHUTOFF = "shutoff"
    PAUSED = "paused"
    CRASHED = "crashed"
    MISSING = "missing"


class HostState(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    DRAINING = "draining"
    OFFLINE = "offline"
    ERROR = "error"


class OperationStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ImageFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


class ImageStatus(StrEnum):
    UPLOADING = "uploading"
    SAVING = "saving"
    AVAILABLE = "available"
    ERROR = "error"
    DELETED = "deleted"


class Hypervisor(StrEnum):
    KVM = "kvm"
    QEMU = "qemu"  # TCG, software emulation


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    READER = "reader"
