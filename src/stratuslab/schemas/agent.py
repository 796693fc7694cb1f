"""What the node agent and the controller say to each other."""

from __future__ import annotations

from pydantic import Field

from stratuslab.schemas.common import Wire, WireIn


class HostCapacity(WireIn):
    hostname: str
    arch: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    hypervisor: str
    agent_version: str = ""


class JoinRequest(WireIn):
    token: str
    capacity: HostCapacity


class JoinResponse(Wire):
    host_id: str
    credential: str


class Heartbeat(WireIn):
    capacity: HostCapacity
    usage: dict[str, float] = Field(default_factory=dict)


class ImageRef(Wire):
    id: str
    #: digests of the (uncompressed) image; the node checks every one given
    sha256: str
    format: str
    #: size of the (uncompressed) image
    size_bytes: int
    #: where to download it (http, https, file URLs), in order; none: from the controller
    locations: list[str] = Field(default_factory=list)
    #: how the files at ``locations`` are compressed: gz, bz2, xz (default: by URL suffix)
    compression: str | None = None
    sha512: str | None = None


class DesiredInstance(Wire):
    id: str
    name: str
    hostname: str
    generation: int
    desired: str
    vcpus: int
    memory_mib: int
    image: ImageRef
    ssh_port: int | None
    ssh_keys: list[str]
    #: base64 of the user data
    user_data: str | None
    context_method: str = "nocloud"
    context: dict[str, str] = Field(default_factory=dict)
    #: user-mode NAT to the outside (site setting guest_egress); otherwise forwards only
    egress: bool = False
    #: save the (stopped) root disk as this image
    save_image_id: str | None = None
    reboot_seq: int
    reboot_hard: bool
    stop_timeout: float


class DesiredState(Wire):
    host_id: str
    generation: int
    instances: list[DesiredInstance]


class ObservedInstance(WireIn):
    id: str
    status: str
    observed_generation: int
    reason: str = ""
    power_state: str = ""


class AgentEvent(WireIn):
    kind: str
    message: str
    level: str = "info"
    instance_id: str | None = None


class ConsoleChunk(WireIn):
    instance_id: str
    offset: int
    data: str


class Report(WireIn):
    instances: list[ObservedInstance] = Field(default_factory=list)
    events: list[AgentEvent] = Field(default_factory=list)
    console: list[ConsoleChunk] = Field(default_factory=list)


class ReportAck(Wire):
    #: instance ids the controller no longer knows or that are fully deleted
    forget: list[str] = Field(default_factory=list)
