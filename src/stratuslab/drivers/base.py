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
class DiskSpec:
    """A disk attached to the domain, in bus order."""

    path: Path
    format: str = "qcow2"  # qcow2 | raw
    device: str = "disk"  # disk | cdrom
    bus: str = "virtio"  # virtio | sata | ide | scsi
    target: str = "vda"  # vda, vdb, ... ; sda ... for sata
    readonly: bool = False
    boot_order: int | None = None


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
    #: QEMU user-mode NIC with these forwards (restrict=on: no route anywhere else).
    user_network: bool = True
    port_forwards: tuple[PortForward, ...] = ()
    mac: str | None = None
    #: TCG translation-cache size in MiB (QEMU reserves 1 GiB per guest otherwise).
    tcg_tb_size_mib: int = 128
    metadata: dict[str, str] = field(default_factory=dict)


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
