from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from stratuslab.schemas.common import Wire, WireIn


class Host(Wire):
    id: str
    name: str
    state: str
    hypervisor: str
    arch: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    vcpus_allocated: int = 0
    memory_allocated_mib: int = 0
    instances: int = 0
    usage: dict[str, Any]
    last_heartbeat: datetime | None
    agent_version: str
    created_at: datetime
    #: what the admin chose: enabled, disabled, draining
    admin_state: str = "enabled"
    state_reason: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    #: overcommit ratios; None: the cloud's default
    cpu_ratio: float | None = None
    ram_ratio: float | None = None
    disk_ratio: float | None = None
    migration_uri: str | None = None
    disk_allocated_gib: int = 0


class HostStateChange(WireIn):
    action: Literal["enable", "disable", "drain"]
    reason: str = Field(default="", max_length=256)


class HostUpdate(WireIn):
    #: labels to set; a null value removes the label
    labels: dict[str, str | None] = Field(default_factory=dict)
    cpu_ratio: float | None = None
    ram_ratio: float | None = None
    disk_ratio: float | None = None
    #: ratio names to reset to the cloud's default
    reset_ratios: list[Literal["cpu_ratio", "ram_ratio", "disk_ratio"]] = Field(
        default_factory=list
    )


class MigrateRequest(WireIn):
    host: str | None = Field(
        default=None, description="target host; the scheduler's choice if absent"
    )
    live: bool = Field(
        default=False,
        description="move the running instance without stopping it (both hosts need a "
        "migration URI)",
    )


class JoinTokenCreated(Wire):
    token: str
    expires_at: datetime
