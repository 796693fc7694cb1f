from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from stratuslab.schemas.common import Wire, WireIn
from stratuslab.schemas.networks import Nic, PortForward
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
    volumes: list[str] = Field(
        default_factory=list, description="volumes (ids or names) attached at creation"
    )
    volatile_disks: list[int] = Field(
        default_factory=list,
        description="sizes in GiB of volatile disks: made with the instance, deleted with it",
    )
    boot_volume: str | None = Field(
        default=None, description="boot from this bootable volume (made from the image)"
    )
    networks: list[str] = Field(
        default_factory=list,
        description="NICs on virtual networks, in guest order: NAME[:ip=ADDRESS][:ipv6=ADDRESS]",
    )
    security_group: str | None = Field(
        default=None, description="security group of the NICs (default: the project's default)"
    )
    requirements: str | None = Field(
        default=None,
        max_length=4096,
        description='host requirement expression, e.g. ARCH = "x86_64" & LABEL:gpu = "yes" '
        "(the original --vm-requirements; docs/scheduler.md)",
    )
    affinity_group: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="run on a host with other members"
    )
    anti_affinity_group: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="never on a host with another member"
    )
    ha_policy: Literal["none", "restart", "migrate"] | None = Field(
        default=None,
        description="when its host fails: none, restart (elsewhere, from the image), migrate "
        "(elsewhere, with its disks: needs a boot volume on shared storage); the site default "
        "if absent",
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
    #: NICs on virtual networks, with their addresses
    nics: list[Nic] = Field(default_factory=list)
    #: host ports forwarded to the instance (PAT)
    port_forwards: list[PortForward] = Field(default_factory=list)
    requirements: str | None = None
    affinity_group: str | None = None
    anti_affinity_group: str | None = None
    ha_policy: str = "none"
    #: a migration in progress: mode (cold, live), from, to, phase
    migration: dict[str, Any] | None = None


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
