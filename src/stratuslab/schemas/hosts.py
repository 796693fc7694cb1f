from __future__ import annotations

from datetime import datetime
from typing import Any

from stratuslab.schemas.common import Wire


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


class JoinTokenCreated(Wire):
    token: str
    expires_at: datetime
