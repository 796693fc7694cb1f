"""An in-memory compute driver that behaves like libvirt, for tests and simulation.

It follows libvirt's state machine: ``define`` gives a shut-off domain, ``start`` runs it,
``shutdown`` powers it off (at once, after some :meth:`state` polls to mimic a guest handling
ACPI, or never when the guest ignores ACPI), ``reboot``/``reset`` keep it running. It is
thread-safe and small, so a simulation can hold thousands of them in one process.

Tests can make any method fail with ``fail_on={"start", ...}`` (a :class:`DriverError` is
raised before anything changes), and can act as the guest with :meth:`guest_poweroff` and
:meth:`crash`.

Fake drivers registered in one :class:`FakeHypervisors` reach each other by URI, so a domain
can be live-migrated from one to another (:meth:`FakeComputeDriver.migrate_live`); a
destination with ``"accept_migration"`` in its ``fail_on`` refuses incoming domains.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from stratuslab.drivers.base import (
    DOMAIN_PREFIX,
    MIGRATION_CONFLICT,
    MIGRATION_NOT_RUNNING,
    MIGRATION_REFUSED,
    MIGRATION_SAME_HOST,
    MIGRATION_UNREACHABLE,
    DomainSpec,
    DomainStatus,
    HostCapabilities,
    MigrationOptions,
    VolumeAttachment,
)
from stratuslab.errors import Conflict, DriverError, HypervisorUnavailable, InvalidInput
from stratuslab.types import Hypervisor, PowerState

#: Methods a failure can be injected into.
FAILABLE = frozenset(
    {"capabilities", "list_domains", "state", "define", "start", "shutdown", "destroy"}
    | {"reboot", "reset", "undefine", "attach_volume", "detach_volume"}
    | {"migrate_live", "accept_migration"}
)

_Volumes = dict[str, VolumeAttachment]  # by target


@dataclass(slots=True)
class _Domain:
    spec: DomainSpec
    state: PowerState = PowerState.SHUTOFF
    #: ``state()`` polls left before a pending ACPI shutdown completes; None: none pending.
    shutdown_in: int | None = None
    #: Volumes in the persistent definition, and in the running guest (None: not running).
    config_volumes: _Volumes = field(default_factory=dict)
    live_volumes: _Volumes | None = None

    def set_state(self, state: PowerState) -> None:
        running = state in (PowerState.RUNNING, PowerState.PAUSED)
        if running and self.live_volumes is None:
            self.live_volumes = dict(self.config_volumes)
        elif not running:
            self.live_volumes = None
        self.state = state


class FakeHypervisors:
    """Fake hypervisors by URI: what lets fake drivers live-migrate domains to each other."""

    def __init__(self) -> None:
        self._drivers: dict[str, FakeComputeDriver] = {}
        self._lock = threading.Lock()

    def register(self, uri: str, driver: FakeComputeDriver) -> None:
        with self._lock:
            self._drivers[uri] = driver

    def unregister(self, uri: str) -> None:
        """The hypervisor at ``uri`` becomes unreachable."""
        with self._lock:
            self._drivers.pop(uri, None)

    def lookup(self, uri: str) -> FakeComputeDriver | None:
        with self._lock:
            return self._drivers.get(uri)


class FakeComputeDriver:
    """A :class:`~stratuslab.drivers.base.ComputeDriver` that keeps domains in a dict.

    ``shutdown_delay`` is the number of :meth:`state` calls a running domain still reports
    ``RUNNING`` after :meth:`shutdown` (0: off at once; None: the guest ignores ACPI).
    It also offers the :class:`~stratuslab.drivers.base.HotplugDriver` capability;
    ``guest_releases_disks=False`` plays a guest without ACPI hot-plug (live detach times out).
    With ``hypervisors`` it registers itself there under ``uri`` (default ``fake://HOSTNAME/``)
    and offers the :class:`~stratuslab.drivers.base.LiveMigrationDriver` capability.
    """

    __slots__ = (
        "_domains",
        "_host",
        "_hypervisors",
        "_lock",
        "_names",
        "fail_on",
        "guest_releases_disks",
        "shutdown_delay",
        "uri",
    )

    name = "fake"

    def __init__(
        self,
        hostname: str = "fake-host",
        vcpus: int = 8,
        memory_mib: int = 16384,
        hypervisor: Hypervisor = Hypervisor.QEMU,
        *,
        arch: str = "x86_64",
        shutdown_delay: int | None = 0,
        fail_on: Iterable[str] = (),
        guest_releases_disks: bool = True,
        uri: str | None = None,
        hypervisors: FakeHypervisors | None = None,
    ) -> None:
        self._host = HostCapabilities(hostname, arch, vcpus, memory_mib, hypervisor)
        self.uri = uri or f"fake://{hostname}/"
        self._hypervisors = hypervisors
        self._domains: dict[str, _Domain] = {}
        self._names: dict[str, str] = {}  # name -> uuid
        self._lock = threading.Lock()
        self.shutdown_delay = shutdown_delay
        self.guest_releases_disks = guest_releases_disks
        self.fail_on: set[str] = set(fail_on)
        unknown = self.fail_on - FAILABLE
        if unknown:
            raise ValueError(f"cannot inject failures into {sorted(unknown)}")
        if hypervisors is not None:
            hypervisors.register(self.uri, self)

    # -- the ComputeDriver protocol ---------------------------------------------------------

    def capabilities(self) -> HostCapabilities:
        self._maybe_fail("capabilities")
        return self._host

    def list_domains(self) -> list[DomainStatus]:
        self._maybe_fail("list_domains")
        with self._lock:
            return sorted(
                (
                    DomainStatus(uuid, dom.spec.name, self._poll(dom))
                    for uuid, dom in self._domains.items()
                    if dom.spec.name.startswith(DOMAIN_PREFIX)
                ),
                key=lambda status: status.name,
            )

    def state(self, uuid: str) -> PowerState:
        self._maybe_fail("state")
        with self._lock:
            dom = self._find(uuid)
            return PowerState.MISSING if dom is None else self._poll(dom)

    def define(self, spec: DomainSpec) -> None:
        self._maybe_fail("define")
        uuid = _canonical(spec.uuid)
        if uuid is None:
            raise DriverError(f"malformed uuid {spec.uuid!r}", hint="use a UUID like libvirt's")
        volumes = _check_targets(spec)
        with self._lock:
            self._check_unique(uuid, spec.name)
            dom = self._domains.get(uuid)
            if dom is None:
                self._domains[uuid] = _Domain(spec, config_volumes=volumes)
                self._names[spec.name] = uuid
            else:
                dom.spec, dom.config_volumes = spec, volumes

    def start(self, uuid: str) -> None:
        self._maybe_fail("start")
        with self._lock:
            dom = self._get(uuid)
            if dom.state is not PowerState.RUNNING:
                dom.set_state(PowerState.RUNNING)
                dom.shutdown_in = None

    def shutdown(self, uuid: str) -> None:
        self._maybe_fail("shutdown")
        with self._lock:
            dom = self._get(uuid)
            if dom.state is not PowerState.RUNNING or self.shutdown_delay is None:
                return
            if dom.shutdown_in is None:
                dom.shutdown_in = self.shutdown_delay
            self._poll(dom, consume=False)

    def destroy(self, uuid: str) -> None:
        self._maybe_fail("destroy")
        with self._lock:
            dom = self._find(uuid)
            if dom is not None:
                self._power_off(dom)

    def reboot(self, uuid: str) -> None:
        self._maybe_fail("reboot")
        with self._lock:
            self._get_running(uuid)

    def reset(self, uuid: str) -> None:
        self._maybe_fail("reset")
        with self._lock:
            self._get_running(uuid)

    def undefine(self, uuid: str) -> None:
        self._maybe_fail("undefine")
        with self._lock:
            dom = self._domains.pop(_canonical(uuid) or uuid, None)
            if dom is not None:
                del self._names[dom.spec.name]

    def close(self) -> None:
        """Nothing to release; domains survive, as they do with libvirt."""

    # -- the HotplugDriver capability -------------------------------------------------------

    def attach_volume(self, uuid: str, attachment: VolumeAttachment) -> None:
        self._maybe_fail("attach_volume")
        with self._lock:
            dom = self._get(uuid)
            views = self._views(dom)
            missing = [view for view in views if _missing(dom, view, attachment)]
            for view in missing:
                view[attachment.target] = attachment

    def detach_volume(
        self, uuid: str, attachment: VolumeAttachment, *, timeout: float = 60
    ) -> None:
        self._maybe_fail("detach_volume")
        with self._lock:
            dom = self._get(uuid)
            views = [view for view in self._views(dom) if _present(dom, view, attachment)]
            live = any(view is dom.live_volumes for view in views)
            if live and not self.guest_releases_disks:
                raise DriverError(
                    f"the guest of {dom.spec.name} did not release volume "
                    f"{attachment.volume_id} ({attachment.target}) within {timeout:g} s",
                    hint="the guest kernel needs ACPI PCI hot-plug",
                )
            for view in views:
                del view[attachment.target]

    def attached_volumes(self, uuid: str) -> tuple[VolumeAttachment, ...]:
        with self._lock:
            dom = self._get(uuid)
            view = dom.config_volumes if dom.live_volumes is None else dom.live_volumes
            return tuple(sorted(view.values(), key=lambda attachment: attachment.index))

    # -- the LiveMigrationDriver capability -------------------------------------------------

    def migrate_live(
        self,
        uuid: str,
        dest_uri: str,
        *,
        dest: DomainSpec | None = None,
        options: MigrationOptions | None = None,
    ) -> None:
        """Move the running domain to the fake at ``dest_uri``, checking what libvirt checks.

        ``options`` are accepted and ignored: the fake has no storage or stream to mind.
        """
        self._maybe_fail("migrate_live")
        with self._lock:
            name = self._migratable(uuid).spec.name
        if dest is not None and (_canonical(dest.uuid) != _canonical(uuid) or dest.name != name):
            raise InvalidInput(
                f"the destination spec describes {dest.name} ({dest.uuid}), not {name} ({uuid})",
                hint="a migrated domain keeps its uuid and name; only host-local parts change",
            )
        target = self._hypervisors.lookup(dest_uri) if self._hypervisors is not None else None
        if dest_uri == self.uri or target is self:
            raise Conflict(
                f"cannot live-migrate {name} to {dest_uri}: that is the hypervisor it runs on",
                code=MIGRATION_SAME_HOST,
                hint="name another host's hypervisor",
            )
        if target is None:
            raise HypervisorUnavailable(
                f"cannot live-migrate {name}: the destination {dest_uri} is unreachable",
                code=MIGRATION_UNREACHABLE,
                hint="check the destination URI",
            )
        first, second = sorted((self, target), key=id)
        with first._lock, second._lock:
            dom = self._migratable(uuid)
            key = _canonical(dom.spec.uuid) or dom.spec.uuid
            target._check_incoming(key, name, dest_uri)
            moved = _moved(dom, dest)
            if "accept_migration" in target.fail_on:
                raise DriverError(
                    f"live migration of {name} to {dest_uri} failed: injected refusal",
                    code=MIGRATION_REFUSED,
                    hint="the test asked for it with fail_on",
                    details={"source_state": "running"},
                )
            del self._domains[key], self._names[name]
            target._domains[key] = moved
            target._names[name] = key

    # -- acting as the guest (test helpers) -------------------------------------------------

    def guest_poweroff(self, uuid: str) -> None:
        """The guest powered itself off (``poweroff`` inside the VM)."""
        with self._lock:
            self._power_off(self._get(uuid))

    def crash(self, uuid: str) -> None:
        """The guest crashed and was kept (libvirt shows ``CRASHED`` with on_crash=preserve)."""
        with self._lock:
            dom = self._get(uuid)
            dom.set_state(PowerState.CRASHED)
            dom.shutdown_in = None

    # -- internals --------------------------------------------------------------------------

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail_on:
            raise DriverError(
                f"injected failure in {self.name}.{method}",
                hint="the test asked for it with fail_on",
            )

    def _find(self, uuid: str) -> _Domain | None:
        key = _canonical(uuid)
        return None if key is None else self._domains.get(key)

    def _get(self, uuid: str) -> _Domain:
        dom = self._find(uuid)
        if dom is None:
            raise DriverError(f"no domain with uuid {uuid}", hint="define the domain first")
        return dom

    def _get_running(self, uuid: str) -> _Domain:
        dom = self._get(uuid)
        if self._poll(dom, consume=False) is not PowerState.RUNNING:
            raise DriverError(
                f"domain {dom.spec.name} is not running", hint="start the domain first"
            )
        return dom

    def _migratable(self, uuid: str) -> _Domain:
        dom = self._get(uuid)
        if self._poll(dom, consume=False) not in (PowerState.RUNNING, PowerState.PAUSED):
            raise Conflict(
                f"domain {dom.spec.name} is not running; only a running domain can be "
                "live-migrated",
                code=MIGRATION_NOT_RUNNING,
                hint="start it first, or move it cold",
            )
        return dom

    def _check_incoming(self, uuid: str, name: str, uri: str) -> None:
        """Refuse an incoming domain whose uuid or name clashes, or that runs here already."""
        for key in (uuid, self._names.get(name)):
            dom = None if key is None else self._domains.get(key)
            if dom is None:
                continue
            if key != uuid or dom.spec.name != name:
                raise Conflict(
                    f"cannot live-migrate {name} ({uuid}) to {uri}: it holds domain "
                    f"{dom.spec.name} ({key})",
                    code=MIGRATION_CONFLICT,
                    hint="a domain's name and uuid must be free on the destination",
                )
            if dom.state in (PowerState.RUNNING, PowerState.PAUSED):
                raise Conflict(
                    f"cannot live-migrate {name} to {uri}: it already runs there",
                    code=MIGRATION_CONFLICT,
                    hint="an instance must never run twice: check which host it belongs to",
                )

    def _check_unique(self, uuid: str, name: str) -> None:
        owner = self._names.get(name)
        if owner is not None and owner != uuid:
            raise DriverError(
                f"domain {name} already exists with uuid {owner}",
                hint="pick another name or undefine the other domain",
            )
        dom = self._domains.get(uuid)
        if dom is not None and dom.spec.name != name:
            raise DriverError(
                f"domain {dom.spec.name} is already defined with uuid {uuid}",
                hint="undefine it before defining it under another name",
            )

    @staticmethod
    def _views(dom: _Domain) -> list[_Volumes]:
        live = [] if dom.live_volumes is None else [dom.live_volumes]
        return [*live, dom.config_volumes]

    @staticmethod
    def _power_off(dom: _Domain) -> None:
        if dom.state in (PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED):
            dom.set_state(PowerState.SHUTOFF)
        dom.shutdown_in = None

    @staticmethod
    def _poll(dom: _Domain, *, consume: bool = True) -> PowerState:
        """The domain's state, advancing a pending ACPI shutdown by one poll."""
        if dom.shutdown_in is not None:
            if dom.shutdown_in <= 0:
                dom.set_state(PowerState.SHUTOFF)
                dom.shutdown_in = None
            elif consume:
                dom.shutdown_in -= 1
        return dom.state


def _canonical(uuid: str) -> str | None:
    """``uuid`` in libvirt's lower-case dashed form; None if it is not a UUID."""
    try:
        return str(uuidlib.UUID(uuid))
    except ValueError:
        return None


def _check_targets(spec: DomainSpec) -> _Volumes:
    """``spec``'s volumes by target; InvalidInput when two disks share a target (as libvirt)."""
    targets = [disk.target for disk in spec.disks] + [vol.target for vol in spec.volumes]
    clashes = sorted({target for target in targets if targets.count(target) > 1})
    if clashes:
        raise InvalidInput(
            f"domain {spec.name}: more than one disk on target {', '.join(clashes)}",
            hint="volumes take vdc.. by attachment index; give instance disks other targets",
        )
    return {volume.target: volume for volume in spec.volumes}


def _moved(dom: _Domain, dest: DomainSpec | None) -> _Domain:
    """``dom`` as the destination runs it; InvalidInput when ``dest`` changes its disks."""
    if dest is None:
        config, live = dict(dom.config_volumes), dict(dom.live_volumes or {})
        return _Domain(dom.spec, dom.state, None, config, live)
    running = {disk.target for disk in dom.spec.disks} | set(dom.live_volumes or {})
    wanted = {disk.target for disk in dest.disks} | set(_check_targets(dest))
    if running != wanted:
        raise InvalidInput(
            f"the destination spec of {dest.name} has disks {sorted(wanted)}, the running "
            f"domain {sorted(running)}",
            hint="give every disk of the running domain a destination path, and no others",
        )
    volumes = _check_targets(dest)
    return _Domain(dest, dom.state, None, dict(volumes), dict(volumes))


def _boot_targets(dom: _Domain) -> set[str]:
    return {disk.target for disk in dom.spec.disks}


def _missing(dom: _Domain, view: _Volumes, attachment: VolumeAttachment) -> bool:
    holder = view.get(attachment.target)
    if holder is not None and holder.volume_id == attachment.volume_id:
        return False
    if holder is not None or attachment.target in _boot_targets(dom):
        what = f"volume {holder.volume_id}" if holder is not None else "a boot disk"
        raise Conflict(
            f"target {attachment.target} of domain {dom.spec.name} already holds {what}",
            hint="use another attachment index, or detach that disk first",
        )
    elsewhere = [vol.target for vol in view.values() if vol.volume_id == attachment.volume_id]
    if elsewhere:
        raise Conflict(
            f"volume {attachment.volume_id} is already attached to {dom.spec.name} "
            f"as {elsewhere[0]}",
            hint="detach it first to move it to another index",
        )
    return True


def _present(dom: _Domain, view: _Volumes, attachment: VolumeAttachment) -> bool:
    holder = view.get(attachment.target)
    if holder is None and attachment.target not in _boot_targets(dom):
        return False
    if holder is None or holder.volume_id != attachment.volume_id:
        what = f"volume {holder.volume_id}" if holder is not None else "a boot disk"
        raise Conflict(
            f"target {attachment.target} of domain {dom.spec.name} is {what}, "
            f"not volume {attachment.volume_id}",
            hint="boot disks cannot be detached; check the attachment index",
        )
    return True
