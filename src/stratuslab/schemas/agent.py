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
    #: labels the node declares (NodeSettings.labels); an admin may change them later
    labels: dict[str, str] = Field(default_factory=dict)
    #: libvirt URI other hosts live-migrate to this one through; None: no live migration
    migration_uri: str | None = None


class JoinRequest(WireIn):
    token: str
    capacity: HostCapacity


class JoinResponse(Wire):
    host_id: str
    credential: str


class Heartbeat(WireIn):
    capacity: HostCapacity
    usage: dict[str, float] = Field(default_factory=dict)
    #: keys (sha256) of the image bases in the node's cache: the scheduler favours them
    images: list[str] = Field(default_factory=list, max_length=10000)
    #: set when the node cannot run instances (hypervisor unreachable...): host in error
    error: str | None = None


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


class DesiredAttachment(Wire):
    """A volume of the node's volume pool attached at ``vdc`` + ``index`` (docs/volumes.md)."""

    volume_id: str
    index: int
    readonly: bool = False
    shareable: bool = False
    #: the volume is in the pool of another host (iSCSI or a shared mount): open it at
    #: ``url`` (``iscsi://portal:port/iqn/lun`` or ``file:///path``); no url yet: that host
    #: has not exported it to this one, attach it later
    remote: bool = False
    url: str | None = None
    format: str = "raw"


class DesiredVolume(Wire):
    """A volume the node's pool must hold (``present``) or delete (not ``present``)."""

    id: str
    size_bytes: int
    generation: int
    present: bool = True
    readonly: bool = False
    #: how to make it when missing (none of them: blank)
    image: ImageRef | None = None
    clone_of: str | None = None
    snapshot_of: str | None = None
    #: copy the root disk of this (stopped or deleted) instance; the agent does it itself
    instance_root: str | None = None
    #: make it now as a copy of the root disk of this stopped instance of the host
    root_of: str | None = None
    #: other hosts (names or addresses) whose instances attach it: export it to them
    exports: list[str] = Field(default_factory=list)


class ObservedVolume(WireIn):
    id: str
    exists: bool
    observed_generation: int
    size_bytes: int = 0
    error: str = ""
    #: the other hosts it is exported to now, and where they open it
    exported_to: list[str] = Field(default_factory=list)
    export_url: str = ""
    export_format: str = ""
    #: why exporting it to another host failed
    export_error: str = ""


class DesiredRule(Wire):
    """A security-group allow rule as the host applies it (remote groups expanded)."""

    direction: str
    protocol: str = "any"
    port_min: int | None = None
    port_max: int | None = None
    remote: str | None = None


class DesiredNic(Wire):
    """A NIC on a virtual network (docs/networking.md): its lease, guest config and rules."""

    index: int
    network: str
    mac: str
    ipv4: str | None = None
    ipv6: str | None = None
    #: IPv4 address with the network's prefix length, for the guest's static config
    address: str | None = None
    gateway: str | None = None
    dns: list[str] = Field(default_factory=list)
    mtu: int | None = None
    rules: list[DesiredRule] = Field(default_factory=list)


class DesiredForward(Wire):
    """PAT on the host: ``protocol/host_port`` to ``target:target_port``."""

    protocol: str
    host_port: int
    target: str
    target_port: int
    #: forwarded by QEMU's user-mode NIC (hostfwd on 127.0.0.1), not by the host's nftables
    user_mode: bool = False


class DesiredReservation(Wire):
    mac: str
    ipv4: str
    hostname: str | None = None


class DesiredNetwork(Wire):
    """A network the host must carry: the bridge, DHCP and the reservations of its NICs."""

    name: str
    driver: str
    address_class: str
    cidr4: str | None = None
    gateway4: str | None = None
    cidr6: str | None = None
    gateway6: str | None = None
    dns: list[str] = Field(default_factory=list)
    mtu: int | None = None
    uplink: str | None = None
    vlan: int | None = None
    vni: int | None = None
    reservations: list[DesiredReservation] = Field(default_factory=list)
    #: VXLAN: the underlay addresses of the other hosts carrying this network (FDB peers)
    peers: list[str] = Field(default_factory=list)


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
    #: volumes attached to the domain (persistent and volatile), by index
    volumes: list[DesiredAttachment] = Field(default_factory=list)
    #: boot from this volume of the node's pool instead of an overlay on the image
    boot_volume: str | None = None
    #: the boot volume is in another host's (shared) pool: open it at ``boot_volume_url``
    #: (``iscsi://portal:port/iqn/lun`` or ``file:///path``); no url yet: that host has not
    #: exported it to this one, and the instance waits
    boot_volume_remote: bool = False
    boot_volume_url: str | None = None
    boot_volume_format: str = "raw"
    #: NICs on virtual networks, by index (none: the user-mode NIC only)
    nics: list[DesiredNic] = Field(default_factory=list)
    #: host ports forwarded to this instance (PAT)
    port_forwards: list[DesiredForward] = Field(default_factory=list)
    reboot_seq: int
    reboot_hard: bool
    stop_timeout: float
    #: HA policy (none, restart, migrate): the node powers off restart/migrate instances
    #: when it has lost the controller for long (self-fencing)
    ha_policy: str = "none"
    #: live migration: pull the running instance here from the hypervisor at this URI
    migrate_from: str | None = None
    #: live migration: it is leaving this host; leave its domain alone meanwhile
    migrating_away: bool = False
    #: the status the controller recorded for it when this state was read (its changes alone
    #: do not bump the generation): an agent whose last acknowledged observation disagrees
    #: reports it again (agent/sync.py)
    recorded_status: str = ""


class DesiredState(Wire):
    host_id: str
    generation: int
    instances: list[DesiredInstance]
    #: nothing changed since the generation the agent asked with (its long-poll timed out):
    #: the lists are empty, converge the last full state again
    unchanged: bool = False
    #: the volumes of this node's volume pool
    volumes: list[DesiredVolume] = Field(default_factory=list)
    #: the virtual networks this host carries
    networks: list[DesiredNetwork] = Field(default_factory=list)


class ObservedInstance(WireIn):
    id: str
    status: str
    observed_generation: int
    reason: str = ""
    power_state: str = ""
    #: volume ids attached now (None: not looked at in this pass)
    volumes: list[str] | None = None
    #: volume id -> why attaching or detaching it failed
    volume_errors: dict[str, str] = Field(default_factory=dict)


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
    volumes: list[ObservedVolume] = Field(default_factory=list)


class ReportAck(Wire):
    #: instance ids the controller no longer knows or that are fully deleted
    forget: list[str] = Field(default_factory=list)
