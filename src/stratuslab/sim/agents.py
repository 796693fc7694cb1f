"""Thousands of node agents in one process: one asyncio loop, the fake compute driver.

Each :class:`SimAgent` does what :meth:`stratuslab.agent.loop.Agent.step` does — long-poll
the desired state, converge every instance with the real
:class:`~stratuslab.agent.reconcile.Reconciler` (over :class:`FakeComputeDriver`,
:class:`FakeWorkspace` and :class:`FakeImageCache`), report — but as a coroutine, so a few
thousand of them cost one thread. The agents share a handful of HTTP connection pools (one
pool per :data:`POOL_SIZE` agents keeps httpx's per-request pool scan short).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from stratuslab import __version__
from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.sync import Sync
from stratuslab.agent.workspace import FakeWorkspace
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.errors import ServiceUnavailable
from stratuslab.schemas.agent import (
    DesiredState,
    Heartbeat,
    HostCapacity,
    JoinRequest,
    JoinResponse,
    ObservedInstance,
    Report,
)
from stratuslab.types import Hypervisor, InstanceStatus

AGENT_API = "/api/v1/agent"
#: agents per HTTP connection pool
POOL_SIZE = 25
#: poll this often while an instance is between states (as the real agent does)
BUSY_INTERVAL = 0.5
#: read the whole desired state at least this often (the agent's full_resync_interval)
FULL_RESYNC_INTERVAL = 300.0
JSON = {"Content-Type": "application/json"}


class ControllerError(Exception):
    """The controller answered with an error status."""


@dataclass
class Tracker:
    """When the controller accepted each instance's first ``running`` / ``deleted`` report."""

    running: dict[str, float] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)

    def note(self, observed: Iterable[ObservedInstance], now: float) -> None:
        for obs in observed:
            if obs.status == InstanceStatus.RUNNING.value:
                self.running.setdefault(obs.id, now)
            elif obs.status == InstanceStatus.DELETED.value:
                self.deleted.setdefault(obs.id, now)


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        raise ControllerError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code}")
    return resp


class SimAgent:
    """One host's agent as a coroutine."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        driver: FakeComputeDriver,
        joined: JoinResponse,
        tracker: Tracker,
    ) -> None:
        self.http = http
        self.driver = driver
        self.host_id = joined.host_id
        self.workspace = FakeWorkspace()
        caps = driver.capabilities()
        self.reconciler = Reconciler(
            driver, self.workspace, FakeImageCache(), hypervisor=caps.hypervisor
        )
        self.capacity = HostCapacity(
            hostname=caps.hostname,
            arch=caps.arch,
            vcpus=caps.vcpus,
            memory_mib=caps.memory_mib,
            disk_gib=0,
            hypervisor=caps.hypervisor.value,
            agent_version=__version__,
        )
        self.headers = {"Authorization": f"Bearer {joined.credential}"}
        self.tracker = tracker
        #: what the controller has already (the real agent's rules, agent/sync.py)
        self.sync = Sync(FULL_RESYNC_INTERVAL, time.monotonic)
        #: monotonic time of the last completed pass (desired state read, report accepted)
        self.last_sync = 0.0
        self.passes = 0
        #: reports sent (a pass with no news sends none)
        self.reports = 0
        self.errors = 0

    async def step(self, *, wait: float) -> bool:
        """One pass; True when something is between states (poll again soon)."""
        desired = await self._desired(wait)
        report, busy = self.converge(desired)
        report = self.sync.news(report, busy)
        if Sync.worth_sending(report):
            resp = await self.http.post(
                f"{AGENT_API}/report",
                content=report.model_dump_json(),
                headers={**self.headers, **JSON},
            )
            _check(resp)
            self.reports += 1
        now = time.monotonic()
        self.tracker.note(report.instances, now)
        self.sync.reported(report, desired.generation, (i.id for i in desired.instances))
        self.last_sync = now
        self.passes += 1
        return bool(busy)

    async def _desired(self, wait: float) -> DesiredState:
        """As ``Agent._desired``: a wait that ends with no change reuses the last state."""
        since, brief = self.sync.query()
        params: dict[str, str | int | float] = {"since": since, "wait": wait}
        if brief:
            params["brief"] = "true"
        resp = await self.http.get(f"{AGENT_API}/desired", params=params, headers=self.headers)
        answer = DesiredState.model_validate_json(_check(resp).content)
        return self.sync.received(answer, brief=brief)

    def converge(self, desired: DesiredState) -> tuple[Report, list[str]]:
        """Agent.step's body without the console (fake guests print nothing); the report
        and the instances still between states."""
        report = Report()
        busy: list[str] = []
        for inst in desired.instances:
            result = self.reconciler.converge(inst)
            report.instances.append(result.observed)
            report.events.extend(result.events)
            if result.busy:
                busy.append(inst.id)
        report.events.extend(self.reconciler.collect_garbage({i.id for i in desired.instances}))
        return report, busy

    async def run(self, *, wait: float) -> None:
        busy = False
        backoff = 0.5
        while True:
            try:
                busy = await self.step(wait=BUSY_INTERVAL if busy else wait)
                backoff = 0.5
            except (httpx.TransportError, ControllerError, ServiceUnavailable):
                self.errors += 1
                # the controller went away: resync from scratch as soon as it is back
                self.sync.lost()
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 4.0)

    async def heartbeats(self, interval: float) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        body = Heartbeat(capacity=self.capacity, usage={"load1": 0.0}).model_dump_json()
        while True:
            with contextlib.suppress(httpx.TransportError):
                await self.http.post(
                    f"{AGENT_API}/heartbeat", content=body, headers={**self.headers, **JSON}
                )
            await asyncio.sleep(interval)


@dataclass
class FleetShape:
    hosts: int
    vcpus: int = 32
    memory_mib: int = 131072
    hypervisor: Hypervisor = Hypervisor.KVM


class Fleet:
    """Joins ``shape.hosts`` fake hosts to the controller at ``url`` and runs their agents."""

    def __init__(self, url: str, admin_token: str, shape: FleetShape) -> None:
        self.url = url
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.shape = shape
        self.tracker = Tracker()
        self.agents: list[SimAgent] = []
        self._clients: list[httpx.AsyncClient] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ssl = ssl.create_default_context()

    def _client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self.url,
            verify=self._ssl,
            timeout=httpx.Timeout(120.0, connect=10.0),
            limits=httpx.Limits(
                max_connections=2 * POOL_SIZE, max_keepalive_connections=2 * POOL_SIZE
            ),
        )
        self._clients.append(client)
        return client

    async def join(self, *, concurrency: int = 8) -> float:
        """Join every host with its own single-use token; return the seconds it took."""
        t0 = time.monotonic()
        clients = [self._client() for _ in range((self.shape.hosts + POOL_SIZE - 1) // POOL_SIZE)]
        slots = asyncio.Semaphore(concurrency)

        async def one(i: int) -> SimAgent:
            http = clients[i // POOL_SIZE]
            driver = FakeComputeDriver(
                hostname=f"sim-{i:05d}",
                vcpus=self.shape.vcpus,
                memory_mib=self.shape.memory_mib,
                hypervisor=self.shape.hypervisor,
            )
            async with slots:
                token = _check(await http.post("/api/v1/hosts/tokens", headers=self.admin))
                caps = driver.capabilities()
                req = JoinRequest(
                    token=token.json()["token"],
                    capacity=HostCapacity(
                        hostname=caps.hostname,
                        arch=caps.arch,
                        vcpus=caps.vcpus,
                        memory_mib=caps.memory_mib,
                        disk_gib=0,
                        hypervisor=caps.hypervisor.value,
                        agent_version=__version__,
                    ),
                )
                resp = await http.post(
                    f"{AGENT_API}/join", content=req.model_dump_json(), headers=JSON
                )
            joined = JoinResponse.model_validate_json(_check(resp).content)
            return SimAgent(http, driver, joined, self.tracker)

        self.agents = list(await asyncio.gather(*(one(i) for i in range(self.shape.hosts))))
        return time.monotonic() - t0

    def start(self, *, wait: float, heartbeat_interval: float) -> None:
        for agent in self.agents:
            self._tasks.append(asyncio.create_task(agent.run(wait=wait)))
            if heartbeat_interval > 0:
                self._tasks.append(asyncio.create_task(agent.heartbeats(heartbeat_interval)))

    def synced_since(self, t: float) -> int:
        return sum(1 for a in self.agents if a.last_sync >= t)

    async def wait_synced(self, t: float, *, timeout: float) -> float | None:
        """Seconds from ``t`` until every agent completed a pass after ``t`` (None: timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.synced_since(t) == len(self.agents):
                return max(a.last_sync for a in self.agents) - t
            await asyncio.sleep(0.05)
        return None

    def domains(self) -> dict[str, list[str]]:
        """Instance ids each host's fake hypervisor runs, by host id."""
        return {a.host_id: [d.uuid for d in a.driver.list_domains()] for a in self.agents}

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for client in self._clients:
            await client.aclose()
