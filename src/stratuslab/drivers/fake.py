"""An in-memory compute driver that behaves like libvirt, for tests and simulation.

It follows libvirt's state machine: ``define`` gives a shut-off domain, ``start`` runs it,
``shutdown`` powers it off (at once, after some :meth:`state` polls to mimic a guest handling
ACPI, or never when the guest ignores ACPI), ``reboot``/``reset`` keep it running. It is
thread-safe and small, so a simulation can hold thousands of them in one process.

Tests can make any method fail with ``fail_on={"start", ...}`` (a :class:`DriverError` is
raised before anything changes), and can act as the guest with :meth:`guest_poweroff` and
:meth:`crash`.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass

from stratuslab.drivers.base import (
    DOMAIN_PREFIX,
    DomainSpec,
    DomainStatus,
    HostCapabilities,
)
from stratuslab.errors import DriverError
from stratuslab.types import Hypervisor, PowerState

#: Methods a failure can be injected into.
FAILABLE = frozenset(
    {"capabilities", "list_domains", "state", "define", "start", "shutdown", "destroy"}
    | {"reboot", "reset", "undefine"}
)


@dataclass(slots=True)
class _Domain:
    spec: DomainSpec
    state: PowerState = PowerState.SHUTOFF
    #: ``state()`` polls left before a pending ACPI shutdown completes; None: none pending.
    shutdown_in: int | None = None


class FakeComputeDriver:
    """A :class:`~stratuslab.drivers.base.ComputeDriver` that keeps domains in a dict.

    ``shutdown_delay`` is the number of :meth:`state` calls a running domain still reports
    ``RUNNING`` after :meth:`shutdown` (0: off at once; None: the guest ignores ACPI).
    """

    __slots__ = ("_domains", "_host", "_lock", "_names", "fail_on", "shutdown_delay")

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
    ) -> None:
        self._host = HostCapabilities(hostname, arch, vcpus, memory_mib, hypervisor)
        self._domains: dict[str, _Domain] = {}
        self._names: dict[str, str] = {}  # name -> uuid
        self._lock = threading.Lock()
        self.shutdown_delay = shutdown_delay
        self.fail_on: set[str] = set(fail_on)
        unknown = self.fail_on - FAILABLE
        if unknown:
            raise ValueError(f"cannot inject failures into {sorted(unknown)}")

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
        with self._lock:
            self._check_unique(uuid, spec.name)
            dom = self._domains.get(uuid)
            if dom is None:
                self._domains[uuid] = _Domain(spec)
                self._names[spec.name] = uuid
            else:
                dom.spec = spec

    def start(self, uuid: str) -> None:
        self._maybe_fail("start")
        with self._lock:
            dom = self._get(uuid)
            if dom.state is not PowerState.RUNNING:
                dom.state, dom.shutdown_in = PowerState.RUNNING, None

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

    # -- acting as the guest (test helpers) -------------------------------------------------

    def guest_poweroff(self, uuid: str) -> None:
        """The guest powered itself off (``poweroff`` inside the VM)."""
        with self._lock:
            self._power_off(self._get(uuid))

    def crash(self, uuid: str) -> None:
        """The guest crashed and was kept (libvirt shows ``CRASHED`` with on_crash=preserve)."""
        with self._lock:
            dom = self._get(uuid)
            dom.state, dom.shutdown_in = PowerState.CRASHED, None

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
    def _power_off(dom: _Domain) -> None:
        if dom.state in (PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED):
            dom.state = PowerState.SHUTOFF
        dom.shutdown_in = None

    @staticmethod
    def _poll(dom: _Domain, *, consume: bool = True) -> PowerState:
        """The domain's state, advancing a pending ACPI shutdown by one poll."""
        if dom.shutdown_in is not None:
            if dom.shutdown_in <= 0:
                dom.state, dom.shutdown_in = PowerState.SHUTOFF, None
            elif consume:
                dom.shutdown_in -= 1
        return dom.state


def _canonical(uuid: str) -> str | None:
    """``uuid`` in libvirt's lower-case dashed form; None if it is not a UUID."""
    try:
        return str(uuidlib.UUID(uuid))
    except ValueError:
        return None
