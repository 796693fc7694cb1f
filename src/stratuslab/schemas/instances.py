from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from stratuslab.schemas.common import Wire, WireIn
from stratuslab.schemas.operations import Operation

NAME_PATTERN = r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"


class InstanceCreate(WireIn):
    image: str = Field(min_length=1, description="image id or name")
    flavor: str | None = Field(default=None, description="flavor name; the default if absent")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    count: int = Field(default=1, ge=1, le=100)
    ssh_keys: list[str] = Field(default_factory=list)
    user_data: str | None = Field(
        default=None,
        max_length=1024 * 1024,  # transport bound; the real limit is checked after decoding
        description="base64 of the user data (cloud-config, script, MIME multipart; may be "
        "gzipped): at most 16 KiB after gzip",
    )
    context_method: Literal["nocloud", "configdrive", "opennebula"] | None = Field(
        default=None, description="how the guest gets its context; the site default if absent"
    )
    context: dict[str, str] = Field(
        default_factory=dict, description="free KEY=VALUE pairs passed to the guest"
    )


class Instance(Wire):
    id: str
    name: str
    image_id: str
    flavor_name: str
    vcpus: int
    memory_mib: int
    desired: str
    status: str
    status_reason: str
    context_method: str = "nocloud"
    host_id: str | None
    host_name: str | None = None
    ssh_port: int | None
    address: str | None = None
    generation: int
    observed_generation: int
    owner_id: str
    project_id: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None


class InstanceCreated(Wire):
    operation: Operation
    instances: list[Instance]


class InstanceAction(WireIn):
    action: Literal["start", "stop", "reboot"]
    hard: bool = False


class ConsoleOutput(Wire):
    instance_id: str
    offset: int
    next_offset: int
    data: str
