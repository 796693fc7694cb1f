"""Driver contracts.

A compute driver turns a :class:`DomainSpec` into a running virtual machine and reports what it
sees. It knows nothing of the database, the API or instances' owners; the node agent calls it.
Foreign exceptions (``libvirt.libvirtError``) never leave the driver: they become
:class:`stratuslab.errors.DriverError`.

Every method that changes something is idempotent where that makes sense: defining an already
defined domain redefines it, destroying a stopped domain does nothing, undefining a missing
domain does nothing. The agent's reconcile loop relies on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from stratuslab.errors import InvalidInput
from stratuslab.types import Hypervisor, PowerState

#: Every domain the toolkit manages has a name with this prefix; others are left alone.
DOMAIN_PREFIX = "stratus-"


@dataclass(frozen=True)
class PortForward:
    """A host port forwarded to a guest port by QEMU user-mode networking."""

    host_port: int
    guest_port: int = 22
    host_addr: str = "127.0.0.1"
    protocol: str = "tcp"


@dataclass(frozen=True)
class NetworkSource:
    """A disk QEMU opens over the network with its own initiator (no host kernel module)."""

    protocol: str  # iscsi
    name: str  # iSCSI: "<target IQN>/<LUN>"
    host: str
    port: int = 3260

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}/{self.name}"


@dataclass(frozen=True)
class DiskSpec:
    """A disk attached to the domain, in bus order."""

    path: Path  # ignored when ``network`` is set
    format: str = "qcow2"  # qcow2 | raw
    device: str = "disk"  # disk | cdrom
    bus: str = "virtio"  # virtio | sata | ide | scsi
    target: str = "vda"  # vda, vdb, ... ; sda ... for sata
    readonly: bool = False
    boot_order: int | None = None
    #: Read from the network (iSCSI) instead of the file at ``path``.
    network: NetworkSource | None = None
    #: Several domains may open it at once (only together with ``readonly``).
    shareable: bool = False
    #: The persistent volume this disk is; None for an instance's own disks. The guest sees
    #: the first :data:`VOLUME_SERIAL_CHARS` characters as the disk's serial number.
    volume_id: str | None = None


#: Targets ``vda`` (root) and ``vdb`` (seed) belong to the instance; volumes start after them.
FIRST_VOLUME_TARGET = 2
#: Attachment indexes 0..MAX_VOLUMES-1 map to ``vdc``..``vdz``.
MAX_VOLUMES = 24
#: virtio-blk serial numbers hold 20 bytes.
VOLUME_SERIAL_CHARS = 20


def volume_target(index: int) -> str:
    """The virtio target of attachment ``index``: 0 -> ``vdc``, 1 -> ``vdd``, ... 23 -> ``vdz``.

    The rule is stable (a volume keeps its target across restarts and redefinitions) and never
    gives ``vda``/``vdb``. Inside the guest the kernel names disks in discovery order, so
    guests should find a volume by its serial (``/sys/block/vd*/serial``), not by its name.
    """
    if not 0 <= index < MAX_VOLUMES:
        raise InvalidInput(
            f"attachment index {index} is outside 0..{MAX_VOLUMES - 1}",
            hint=f"a domain holds at most {MAX_VOLUMES} volumes; detach one first",
        )
    return "vd" + chr(ord("a") + FIRST_VOLUME_TARGET + index)


@dataclass(frozen=True)
class VolumeAttachment:
    """A persistent volume attached to a domain as a virtio disk at ``volume_target(index)``.

    The source is a file (``path`` + ``format``) or a network disk (``network``), as a volume
    backend's ``export`` describes it. ``shareable`` needs ``readonly``.
    """

    volume_id: str
    index: int
    format: str = "raw"  # qcow2 | raw
    path: Path | None = None
    network: NetworkSource | None = None
    readonly: bool = False
    shareable: bool = False

    def __post_init__(self) -> None:
        volume_target(self.index)  # validates the index
        if (self.path is None) == (self.network is None):
            raise InvalidInput(
                f"volume {self.volume_id}: an attachment needs exactly one of path and network",
                hint="build it from the volume backend's export",
            )
        if self.shareable and not self.readonly:
            raise InvalidInput(
                f"volume {self.volume_id}: only read-only volumes can be shared",
                hint="attach it read-only, or to one instance at a time",
            )

    @property
    def target(self) -> str:
        return volume_target(self.index)

    def disk_spec(self) -> DiskSpec:
        """The disk as a :class:`DiskSpec` (what the domain XML is built from)."""
        return DiskSpec(
            path=self.path if self.path is not None else Path(),
            format=self.format,
            target=self.target,
            readonly=self.readonly,
            network=self.network,
            shareable=self.shareable,
            volume_id=self.volume_id,
        )


@dataclass(frozen=True)
class NicSpec:
    """An extra NIC: on a host bridge (tap named ``target``, so host rules can name it) or a
    libvirt user-mode NIC. The QEMU user-mode NIC with port forwards stays ``user_network``."""

    mac: str
    kind: str = "bridge"  # bridge | user
    bridge: str | None = None
    model: str = "virtio"
    target: str | None = None  # host-side tap name; libvirt picks vnetN when None


@dataclass(frozen=True)
class DomainSpec:
    """Everything a driver needs to define one domain."""

    uuid: str
    name: str  # always DOMAIN_PREFIX + something
    vcpus: int
    memory_mib: int
    disks: tuple[DiskSpec, ...]
    console_log: Path
    hypervisor: Hypervisor = Hypervisor.QEMU
    arch: str = "x86_64"
    #: QEMU user-mode NIC with these forwards.
    user_network: bool = True
    #: user-mode NAT to whatever the host reaches; False (restrict=on): only the forwards.
    user_network_egress: bool = False
    port_forwards: tuple[PortForward, ...] = ()
    mac: str | None = None
    #: TCG translation-cache size in MiB (QEMU reserves 1 GiB per guest otherwise).
    tcg_tb_size_mib: int = 128
    metadata: dict[str, str] = field(default_factory=dict)
    #: NICs after the user-mode one, in guest PCI order.
    nics: tuple[NicSpec, ...] = ()
    #: Persistent volumes attached at define time (after ``disks``, from ``vdc`` on).
    volumes: tuple[VolumeAttachment, ...] = ()


@dataclass(frozen=True)
class DomainStatus:
    uuid: str
    name: str
    state: PowerState


@dataclass(frozen=True)
class HostCapabilities:
    hostname: str
    arch: str
    vcpus: int
    memory_mib: int
    hypervisor: Hypervisor


@runtime_checkable
class ComputeDriver(Protocol):
    """The small required surface every compute driver offers."""

    name: str

    def capabilities(self) -> HostCapabilities:
        """Describe the host: CPUs, memory, architecture, the hypervisor it will use."""
        ...

    def list_domains(self) -> list[DomainStatus]:
        """All domains whose name starts with :data:`DOMAIN_PREFIX`, with their state."""
        ...

    def state(self, uuid: str) -> PowerState:
        """The domain's power state; :attr:`PowerState.MISSING` when it is not defined."""
        ...

    def define(self, spec: DomainSpec) -> None:
        """Define (or redefine) the persistent domain. Does not start it."""
        ...

    def start(self, uuid: str) -> None:
        """Start a defined domain; no-op if it runs already."""
        ...

    def shutdown(self, uuid: str) -> None:
        """Ask the guest to power off (ACPI). Returns at once; poll :meth:`state`."""
        ...

    def destroy(self, uuid: str) -> None:
        """Force the domain off at once; no-op if it is not running."""
        ...

    def reboot(self, uuid: str) -> None:
        """Ask the guest to reboot (ACPI)."""
        ...

    def reset(self, uuid: str) -> None:
        """Hard reset, like pressing the reset button."""
        ...

    def undefine(self, uuid: str) -> None:
        """Remove the domain definition (forcing it off first); no-op if missing."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class HotplugDriver(Protocol):
    """Optional capability: attach and detach volumes, also while the domain runs.

    Check with ``isinstance(driver, HotplugDriver)``. Attaching changes the persistent
    definition and, when the domain runs, the live guest. Both calls are idempotent: attaching
    what is attached, or detaching what is not, does nothing. A target held by another disk is
    a :class:`~stratuslab.errors.Conflict`; so is detaching a disk that is not that volume
    (such as a boot disk).
    """

    def attach_volume(self, uuid: str, attachment: VolumeAttachment) -> None:
        """Attach ``attachment`` (live and persistent when running, persistent otherwise)."""
        ...

    def detach_volume(
        self, uuid: str, attachment: VolumeAttachment, *, timeout: float = 60
    ) -> None:
        """Detach it; when running, wait up to ``timeout`` s for the guest to release it."""
        ...

    def attached_volumes(self, uuid: str) -> tuple[VolumeAttachment, ...]:
        """The volumes attached now (live when running, else as defined), by index."""
        ...


# -- live migration (optional capability) ---------------------------------------------------

#: Stable error codes of :meth:`LiveMigrationDriver.migrate_live`, shared by every driver.
MIGRATION_UNREACHABLE = "migration_destination_unreachable"  # HypervisorUnavailable
MIGRATION_SAME_HOST = "migration_same_host"  # Conflict
MIGRATION_CONFLICT = "migration_destination_conflict"  # Conflict
MIGRATION_NOT_RUNNING = "migration_not_running"  # Conflict
MIGRATION_UNSAFE = "migration_unsafe"  # DriverError
MIGRATION_UNSUPPORTED = "migration_unsupported"  # DriverError
MIGRATION_REFUSED = "migration_refused"  # DriverError
MIGRATION_TIMEOUT = "migration_timeout"  # DriverError
MIGRATION_FAILED = "migration_failed"  # DriverError


@dataclass(frozen=True)
class MigrationOptions:
    """How :meth:`LiveMigrationDriver.migrate_live` moves a running domain.

    Storage is either copied or shared. ``copy_storage`` copies the top layer of every
    writable file disk while the guest runs (libvirt ``VIR_MIGRATE_NON_SHARED_INC``): the
    destination must already hold each such disk at its path in the destination spec, created
    on the same backing base with the same virtual size, and every read-only disk (the seed
    ISO). Otherwise the disks must be on storage both hosts see at the same path; libvirt
    refuses that (``migration_unsafe``) unless the filesystem is one it knows to be shared
    (NFS, CephFS, GlusterFS, GFS2, OCFS2, ...) or ``trust_shared_storage`` vouches for it.
    """

    copy_storage: bool = False
    #: Skip libvirt's "is this filesystem shared?" check (``VIR_MIGRATE_UNSAFE``).
    trust_shared_storage: bool = False
    #: Where the memory (and disk) stream goes, e.g. ``tcp://10.0.0.2``; None: the address
    #: the destination's hostname resolves to.
    migration_uri: str | None = None
    #: The source libvirtd drives the migration and talks to the destination itself (it
    #: survives the caller dying); False: this process drives it over two connections.
    peer_to_peer: bool = True
    #: Encrypt the stream with QEMU's TLS (needs ``migrate_tls_x509_*`` on both hosts).
    tls: bool = False
    #: Cap the stream at this many MiB/s; None: no cap.
    bandwidth_mib_s: int | None = None
    #: Abort (the domain keeps running on the source) after this many seconds.
    timeout: float = 600.0


@runtime_checkable
class LiveMigrationDriver(Protocol):
    """Optional capability: move a running domain to another hypervisor without stopping it.

    Check with ``isinstance(driver, LiveMigrationDriver)``. ``dest_uri`` names the destination
    hypervisor as this driver reaches it (libvirt: ``qemu+tls://host/system``,
    ``qemu+ssh://host/system``, ``qemu+unix:///system?socket=PATH``). ``dest`` is the
    domain as the destination runs it: the same uuid, name and guest hardware, with the
    destination's disk paths, console log, forwarded ports and bridges; None keeps the
    source's. On success the domain runs (and is defined) on the destination only. On an
    error before the switch-over (every case below) it still runs on the source and nothing
    is left on the destination; ``details["source_state"]`` says what the source saw after.

    Errors (a :class:`~stratuslab.errors.DriverError` with a ``MIGRATION_*`` code unless said
    otherwise): the domain is not defined (``DriverError``, no code); it is not running
    (``Conflict``, ``migration_not_running``); ``dest`` describes another domain
    (``InvalidInput``); the destination cannot be reached (``HypervisorUnavailable``,
    ``migration_destination_unreachable``), is this very host (``Conflict``,
    ``migration_same_host``) or holds a clashing domain (``Conflict``,
    ``migration_destination_conflict``); storage is neither shared nor copied
    (``migration_unsafe``); the hypervisor cannot migrate (``migration_unsupported``); the
    destination refused the domain (``migration_refused``); the timeout expired
    (``migration_timeout``); anything else (``migration_failed``).
    """

    def migrate_live(
        self,
        uuid: str,
        dest_uri: str,
        *,
        dest: DomainSpec | None = None,
        options: MigrationOptions | None = None,
    ) -> None:
        """Live-migrate domain ``uuid`` to ``dest_uri``; returns once it runs there."""
        ...
