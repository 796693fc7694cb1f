from __future__ import annotations

from datetime import datetime

from pydantic import Field

from stratuslab.schemas.common import Wire, WireIn


class FlavorCreate(WireIn):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    vcpus: int = Field(ge=1, le=1024)
    memory_mib: int = Field(ge=64, le=16 * 1024 * 1024)
    swap_mib: int = Field(default=0, ge=0)
    disk_gib: int = Field(default=0, ge=0)


class Flavor(Wire):
    id: str
    name: str
    vcpus: int
    memory_mib: int
    swap_mib: int
    disk_gib: int
    builtin: bool
    is_default: bool
    created_at: datetime
