"""The libvirt compute driver: persistent domains on ``qemu:///system`` (or any libvirt URI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stratuslab.drivers.base import (
    DOMAIN_PREFIX,
    DomainSpec,
    DomainStatus,
    HostCapabilities,
    MigrationOptions,
    VolumeAttachment,
)
from stratuslab.drivers.libvirt import hotplug, kvm_probe, migrate
from stratuslab.drivers.libvirt.connection import (
    Connection,
    error_code,
    libvirt_errors,
    load_libvirt,
)
from stratuslab.drivers.libvirt.domain_xml import domain_xml
from stratuslab.errors import DriverError
from stratuslab.types import Hypervisor, PowerState

# virDomainState -> PowerState. NOSTATE is transient (being created); SHUTDOWN means
# "shutting down", still running; PMSUSPENDED is guest suspend-to-RAM.
_STATES = {
    0: PowerState.PAUSED,  # VIR_DOMAIN_NOSTATE
    1: PowerState.RUNNING,  # VIR_DOMAIN_RUNNING
    2: PowerState.RUNNING,  # VIR_DOMAIN_BLOCKED
    3: PowerState.PAUSED,  # VIR_DOMAIN_PAUSED
    4: PowerState.RUNNING,  # VIR_DOMAIN_SHUTDOWN
    5: PowerState.SHUTOFF,  # VIR_DOMAIN_SHUTOFF
    6: PowerState.CRASHED,  # VIR_DOMAIN_CRASHED
    7: PowerState.PAUSED,  # VIR_DOMAIN_PMSUSPENDED
}


class LibvirtComputeDriver:
    """A :class:`~stratuslab.drivers.base.ComputeDriver` on libvirt.

    ``hypervisor`` is what :meth:`capabilities` reports; when None it is KVM if the KVM probe
    (cached in ``kvm_probe_cache``) boots a test guest under KVM on this host, else QEMU
    (TCG). Only local ``qemu:///`` URIs are probed; others default to QEMU.
    """

    name = "libvirt"

    def __init__(
        self,
        uri: str = "qemu:///system",
        *,
        hypervisor: Hypervisor | None = None,
        kvm_probe_cache: Path | None = None,
    ) -> None:
        self.uri = uri
        self._hypervisor = hypervisor
        self._kvm_probe_cache = kvm_probe_cache
        self._conn = Connection(uri)

    @property
    def hypervisor(self) -> Hypervisor:
        """The hypervisor domains should use on this host (probed once, lazily)."""
        if self._hypervisor is None:
            local_qemu = self.uri.startswith("qemu:///")
            kvm = local_qemu and kvm_probe.kvm_usable(self._kvm_probe_cache)
            self._hypervisor = Hypervisor.KVM if kvm else Hypervisor.QEMU
        return self._hypervisor

    # -- the ComputeDriver protocol ---------------------------------------------------------

    def capabilities(self) -> HostCapabilities:
        with libvirt_errors("read the host's information"):
            conn = self._conn.get()
            model, memory_mib, cpus = conn.getInfo()[:3]
            hostname = conn.getHostname()
        return HostCapabilities(
            hostname=str(hostname),
            arch=str(model),
            vcpus=int(cpus),
            memory_mib=int(memory_mib),
            hypervisor=self.hypervisor,
        )

    def list_domains(self) -> list[DomainStatus]:
        libvirt = load_libvirt()
        with libvirt_errors("list domains"):
            stats = self._conn.get().getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
            statuses = [
                DomainStatus(dom.UUIDString(), dom.name(), _power_state(info["state.state"]))
                for dom, info in stats
                if dom.name().startswith(DOMAIN_PREFIX)
            ]
        return sorted(statuses, key=lambda status: status.name)

    def state(self, uuid: str) -> PowerState:
        dom = self._find(uuid)
        return PowerState.MISSING if dom is None else self._state_of(dom)

    def define(self, spec: DomainSpec) -> None:
        with libvirt_errors(f"define domain {spec.name}"):
            self._conn.get().defineXML(domain_xml(spec))

    def start(self, uuid: str) -> None:
        dom = self._require(uuid)
        state = self._state_of(dom)
        with libvirt_errors(f"start domain {uuid}"):
            if state is PowerState.PAUSED:
                dom.resume()
            elif state is not PowerState.RUNNING:
                dom.create()

    def shutdown(self, uuid: str) -> None:
        dom = self._require(uuid)
        if self._state_of(dom) is PowerState.RUNNING:
            # flags=0: QEMU uses ACPI, as no guest agent channel is configured.
            self._ignore_not_running(f"shut down domain {uuid}", dom.shutdown)

    def destroy(self, uuid: str) -> None:
        dom = self._find(uuid)
        if dom is not None and self._state_of(dom) is not PowerState.SHUTOFF:
            self._ignore_not_running(f"destroy domain {uuid}", dom.destroy)

    def reboot(self, uuid: str) -> None:
        dom = self._require(uuid)
        with libvirt_errors(f"reboot domain {uuid}"):
            dom.reboot(0)

    def reset(self, uuid: str) -> None:
        dom = self._require(uuid)
        with libvirt_errors(f"reset domain {uuid}"):
            dom.reset(0)

    def undefine(self, uuid: str) -> None:
        dom = self._find(uuid)
        if dom is None:
            return
        self.destroy(uuid)
        libvirt = load_libvirt()
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        )
        extra = libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        try:
            with libvirt_errors(f"undefine domain {uuid}"):
                dom.undefineFlags(flags | extra)
        except DriverError as exc:
            # Drivers without checkpoints/NVRAM (libvirt's test driver) reject those flags.
            if error_code(exc) not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                raise
            with libvirt_errors(f"undefine domain {uuid}"):
                dom.undefineFlags(flags)

    def close(self) -> None:
        self._conn.close()

    # -- the HotplugDriver capability (see hotplug.py) --------------------------------------

    def attach_volume(self, uuid: str, attachment: VolumeAttachment) -> None:
        hotplug.attach(self._require(uuid), attachment)

    def detach_volume(
        self, uuid: str, attachment: VolumeAttachment, *, timeout: float = 60
    ) -> None:
        hotplug.detach(self._require(uuid), attachment, timeout=timeout)

    def attached_volumes(self, uuid: str) -> tuple[VolumeAttachment, ...]:
        return hotplug.attached(self._require(uuid))

    # -- the LiveMigrationDriver capability (see migrate.py) --------------------------------

    def migrate_live(
        self,
        uuid: str,
        dest_uri: str,
        *,
        dest: DomainSpec | None = None,
        options: MigrationOptions | None = None,
    ) -> None:
        migrate.migrate_live(
            self._conn,
            self._require(uuid),
            dest_uri,
            dest=dest,
            options=options or MigrationOptions(),
        )

    # -- internals --------------------------------------------------------------------------

    def _find(self, uuid: str) -> Any | None:
        """The virDomain with ``uuid``; None if there is none (or ``uuid`` is malformed)."""
        libvirt = load_libvirt()
        try:
            with libvirt_errors(f"look up domain {uuid}"):
                return self._conn.get().lookupByUUIDString(uuid)
        except DriverError as exc:
            if error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                return None
            raise

    def _require(self, uuid: str) -> Any:
        dom = self._find(uuid)
        if dom is None:
            raise DriverError(f"no domain with uuid {uuid}", hint="define the domain first")
        return dom

    def _state_of(self, dom: Any) -> PowerState:
        libvirt = load_libvirt()
        try:
            with libvirt_errors("read a domain's state"):
                return _power_state(dom.state()[0])
        except DriverError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:  # undefined meanwhile
                return PowerState.MISSING
            raise

    @staticmethod
    def _ignore_not_running(action: str, call: Any) -> None:
        """Run ``call()``; a domain that stopped meanwhile is not an error."""
        libvirt = load_libvirt()
        try:
            with libvirt_errors(action):
                call()
        except DriverError as exc:
            if error_code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:
                raise


def _power_state(state: int) -> PowerState:
    return _STATES.get(state, PowerState.CRASHED)
