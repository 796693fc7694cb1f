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
from stratuslab.agent.workspace import Workspace
from stratuslab.drivers.base import ComputeDriver
from stratuslab.errors import ServiceUnavailable, StratusError, Unauthorized
from stratuslab.schemas.agent import ConsoleChunk, Heartbeat, HostCapacity, Report

log = logging.getLogger(__name__)

#: console text sent per instance per report
CONSOLE_CHUNK = 64 * 1024
#: poll this often while something is changing (booting, stopping)
BUSY_INTERVAL = 0.5
#: keep polling fast this long after the last console output
CONSOLE_QUIET = 15.0
#: and this long after a domain was started, so its first console lines arrive promptly
BOOT_WINDOW = 60.0


def host_capacity(driver: ComputeDriver, state_dir: Path, hostname: str = "") -> HostCapacity:
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
    )


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
    ) -> None:
        self.link = link
        self.reconciler = reconciler
        self.workspace = workspace
        self.capacity = capacity
        self.heartbeat_interval = heartbeat_interval
        self.resync_interval = resync_interval
        self.console = ConsoleTailer(workspace)
        self.stopping = threading.Event()
        self.generation = -1
        #: poll every BUSY_INTERVAL until this monotonic time
        self.fast_until = 0.0

    def run(self) -> None:
        beat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beat.start()
        busy = False
        while not self.stopping.is_set():
            try:
                busy = self.step(wait=BUSY_INTERVAL if busy else self.resync_interval)
            except Unauthorized:
                log.error("the controller no longer accepts this host's credential; stopping")
                raise
            except ServiceUnavailable as exc:
                log.warning("%s; retrying", exc.message)
                # the controller may have restarted: ask for the full state at once
                self.generation = -1
                self.stopping.wait(2.0)
            except StratusError as exc:
                log.error("reconcile pass failed: %s", exc)
                self.stopping.wait(2.0)

    def step(self, *, wait: float) -> bool:
        """One pass: wait for a change (or ``wait`` s), converge every instance, report."""
        desired = self.link.desired(since=self.generation, wait=wait)
        report = Report()
        now = time.monotonic()
        report.events.extend(self.reconciler.networks.ensure_networks(desired))
        for inst in desired.instances:
            result = self.reconciler.converge(inst)
            report.instances.append(result.observed)
            report.events.extend(result.events)
            if result.busy:
                self.fast_until = max(self.fast_until, now + BUSY_INTERVAL)
            if any(e.kind in ("instance.started", "instance.rebooted") for e in result.events):
                self.fast_until = max(self.fast_until, now + BOOT_WINDOW)
        report.events.extend(self.reconciler.networks.finish(desired))
        keep = {i.id for i in desired.instances}
        report.events.extend(self.reconciler.collect_garbage(keep))
        live = [i.id for i in desired.instances if i.desired != "deleted"]
        report.console = self.console.chunks(live)
        self.link.report(report)
        self.console.sent(report.console)
        if report.console:
            self.fast_until = max(self.fast_until, time.monotonic() + CONSOLE_QUIET)
        self.generation = desired.generation
        return time.monotonic() < self.fast_until

    def _heartbeats(self) -> None:
        while not self.stopping.is_set():
            try:
                self.link.heartbeat(Heartbeat(capacity=self.capacity(), usage=_usage()))
            except StratusError as exc:
                log.warning("heartbeat failed: %s", exc.message)
            self.stopping.wait(self.heartbeat_interval)


def _usage() -> dict[str, float]:
    try:
        load1, _, _ = os.getloadavg()
    except OSError:
        load1 = 0.0
    return {"load1": load1}
