"""The agent's main loop: watch desired state, converge, report; heartbeat beside it."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stratuslab import __version__
from stratuslab.agent.controller import ControllerLink
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.sync import Sync
from stratuslab.agent.workspace import Workspace
from stratuslab.drivers.base import ComputeDriver
from stratuslab.errors import InvalidInput, ServiceUnavailable, StratusError, Unauthorized
from stratuslab.schemas.agent import (
    AgentEvent,
    ConsoleChunk,
    DesiredInstance,
    DesiredState,
    Heartbeat,
    HostCapacity,
    Report,
)

log = logging.getLogger(__name__)

#: console text sent per instance per report
CONSOLE_CHUNK = 64 * 1024
#: poll this often while something is changing (booting, stopping)
BUSY_INTERVAL = 0.5
#: keep polling fast this long after the last console output
CONSOLE_QUIET = 15.0
#: and this long after a domain was started, so its first console lines arrive promptly
BOOT_WINDOW = 60.0


def host_capacity(
    driver: ComputeDriver,
    state_dir: Path,
    hostname: str = "",
    *,
    labels: str = "",
    migration_uri: str = "",
) -> HostCapacity:
    caps = driver.capabilities()
    disk = shutil.disk_usage(state_dir) if state_dir.exists() else None
    return HostCapacity(
        hostname=hostname or caps.hostname,
        arch=caps.arch,
        vcpus=caps.vcpus,
        memory_mib=caps.memory_mib,
        disk_gib=int(disk.total / 2**30) if disk else 0,
        hypervisor=caps.hypervisor.value,
        agent_version=__version__,
        labels=parse_labels(labels),
        migration_uri=migration_uri or None,
    )


def parse_labels(text: str) -> dict[str, str]:
    """``"gpu=yes, rack=r1"`` -> ``{"gpu": "yes", "rack": "r1"}``."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(
                f"host label {item.strip()!r} is not KEY=VALUE",
                hint='write labels as "gpu=yes,rack=r1" (STRATUS_NODE_LABELS)',
            )
        out[key.strip()] = value.strip()
    return out


class ConsoleTailer:
    """Reads what guests printed since the last report (from offset 0 after a restart)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.offsets: dict[str, int] = {}

    def chunks(self, instance_ids: list[str]) -> list[ConsoleChunk]:
        out = []
        for iid in instance_ids:
            path = self.workspace.console_log(iid)
            offset = self.offsets.get(iid, 0)
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read(CONSOLE_CHUNK)
            except OSError:
                continue
            if data:
                out.append(
                    ConsoleChunk(instance_id=iid, offset=offset, data=data.decode("latin-1"))
                )
        return out

    def sent(self, chunks: list[ConsoleChunk]) -> None:
        for c in chunks:
            self.offsets[c.instance_id] = c.offset + len(c.data)


class Stopped(BaseException):
    """Raised by :meth:`Agent.stop` into a long-poll wait: the agent stops at once."""


class Agent:
    def __init__(
        self,
        link: ControllerLink,
        reconciler: Reconciler,
        workspace: Workspace,
        capacity: Callable[[], HostCapacity],
        *,
        heartbeat_interval: float = 10.0,
        resync_interval: float = 15.0,
        full_resync_interval: float = 300.0,
        cached_images: Callable[[], list[str]] | None = None,
        self_fence_after: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: seconds without the controller after which instances that HA would restart
        #: elsewhere are powered off here (0: never); see :meth:`self_fence`
        self.self_fence_after = self_fence_after
        self.clock = clock
        #: when the controller last answered, and what it last wanted here
        self.last_contact = clock()
        self.last_desired: list[DesiredInstance] = []
        #: events to send with the next report (made while the controller was away)
        self.pending_events: list[AgentEvent] = []
        self.cached_images = cached_images or list
        self.link = link
        self.reconciler = reconciler
        self.workspace = workspace
        self.capacity = capacity
        self.heartbeat_interval = heartbeat_interval
        self.resync_interval = resync_interval
        #: what the controller has already (agent/sync.py): a pass with no change converges
        #: the state read last, a report carries only news; everything again at least
        #: every ``full_resync_interval`` seconds
        self.sync = Sync(full_resync_interval, clock)
        self.console = ConsoleTailer(workspace)
        self.stopping = threading.Event()
        #: True while waiting for the controller's long-poll (nothing half-done to interrupt)
        self.polling = False
        #: poll every BUSY_INTERVAL until this monotonic time
        self.fast_until = 0.0

    def run(self) -> None:
        beat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beat.start()
        busy = False
        while not self.stopping.is_set():
            try:
                busy = self.step(wait=BUSY_INTERVAL if busy else self.resync_interval)
            except Stopped:
                return
            except Unauthorized:
                log.error("the controller no longer accepts this host's credential; stopping")
                raise
            except ServiceUnavailable as exc:
                log.warning("%s; retrying", exc.message)
                # the controller may have restarted: ask for the full state at once
                self.sync.lost()
                self.self_fence()
                self.stopping.wait(2.0)
            except StratusError as exc:
                log.error("reconcile pass failed: %s", exc)
                self.stopping.wait(2.0)

    def self_fence(self) -> None:
        """Cut off from the controller for ``self_fence_after`` seconds: power off the
        instances whose HA policy lets the controller restart them elsewhere, so that they
        never run twice (the controller waits ``heartbeat_grace`` + ``ha_delay`` before it
        does; keep ``self_fence_after`` below that). Their disks stay: if the controller
        still wants them here when it answers again, they are started again."""
        if self.self_fence_after <= 0:
            return
        if self.clock() - self.last_contact < self.self_fence_after:
            return
        for inst in self.last_desired:
            if inst.ha_policy in ("restart", "migrate") and inst.desired != "deleted":
                event = self.reconciler.self_fence(inst.id)
                if event is not None:
                    log.warning("%s", event.message)
                    self.pending_events.append(event)

    def stop(self) -> None:
        """From a signal handler: stop after the current pass; during a long-poll, at once
        (the wait is interrupted; convergence is level-triggered, so nothing is lost)."""
        self.stopping.set()
        if self.polling:
            raise Stopped

    def step(self, *, wait: float) -> bool:
        """One pass: wait for a change (or ``wait`` s), converge every instance, report."""
        self.polling = True
        try:
            if self.stopping.is_set():
                raise Stopped
            desired = self._desired(wait)
        finally:
            self.polling = False
        self.last_contact = self.clock()
        self.last_desired = list(desired.instances)
        report = Report(events=self.pending_events)
        self.pending_events = []
        now = time.monotonic()
        # Fencing first: an instance no longer meant for this host (moved away while the host
        # was cut off, or deleted) is destroyed before anything else runs here.
        keep = {i.id for i in desired.instances}
        busy: list[str] = []
        report.events.extend(self.reconciler.collect_garbage(keep))
        report.events.extend(self.reconciler.networks.ensure_networks(desired))
        for inst in desired.instances:
            if inst.migrating_away:
                continue  # live-migrating to another host: hands off its domain
            if inst.migrate_from:
                report.events.extend(self.reconciler.migrate_in(inst))
                continue
            result = self.reconciler.converge(inst)
            report.instances.append(result.observed)
            report.events.extend(result.events)
            if result.busy:
                busy.append(inst.id)
                self.fast_until = max(self.fast_until, now + BUSY_INTERVAL)
            if any(e.kind in ("instance.started", "instance.rebooted") for e in result.events):
                self.fast_until = max(self.fast_until, now + BOOT_WINDOW)
        report.events.extend(self.reconciler.networks.finish(desired))
        live = [i.id for i in desired.instances if i.desired != "deleted"]
        report.console = self.console.chunks(live)
        report = self.sync.news(report, busy)
        if self.link.always_report() or Sync.worth_sending(report):
            self.link.report(report)
            self.console.sent(report.console)
        if report.console:
            self.fast_until = max(self.fast_until, time.monotonic() + CONSOLE_QUIET)
        self.sync.reported(report, desired.generation, keep)
        return time.monotonic() < self.fast_until

    def _desired(self, wait: float) -> DesiredState:
        """The desired state: the controller's answer, or the last one again when it says
        nothing changed since the generation this agent has."""
        since, brief = self.sync.query()
        answer = self.link.desired(since=since, wait=wait, brief=brief)
        return self.sync.received(answer, brief=brief)

    @property
    def generation(self) -> int:
        """The generation of the desired state converged last (-1: none yet)."""
        return self.sync.generation

    def _heartbeats(self) -> None:
        while not self.stopping.is_set():
            try:
                self.link.heartbeat(
                    Heartbeat(
                        capacity=self.capacity(),
                        usage={**_usage(), **self.reconciler.networks.usage()},
                        images=self.cached_images(),
                    )
                )
            except StratusError as exc:
                log.warning("heartbeat failed: %s", exc.message)
            self.stopping.wait(self.heartbeat_interval)


def _usage() -> dict[str, float]:
    try:
        load1, _, _ = os.getloadavg()
    except OSError:
        load1 = 0.0
    return {"load1": load1}
