"""What the simulated users do: fill the cloud, churn it, read it; and what we check after."""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from stratuslab.sim.agents import Fleet, Tracker

API = "/api/v1"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    samples: int

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        return cls(percentile(seconds, 0.5) * 1e3, percentile(seconds, 0.99) * 1e3, len(seconds))


@dataclass
class Phase:
    """Instances asked for, placed by the API at once, and acknowledged running by agents."""

    requested: int = 0
    placed: int = 0
    api_seconds: float = 0.0
    acked: int = 0
    e2e_seconds: float = 0.0
    deleted: int = 0
    deletes_acked: int = 0
    #: requests that failed (5xx or connection lost); their instances are not counted
    errors: int = 0
    create_latency: Latency | None = None
    ids: list[str] = field(default_factory=list)

    @property
    def placements_per_s(self) -> float:
        return self.placed / self.api_seconds if self.api_seconds else 0.0

    @property
    def acked_per_s(self) -> float:
        return self.acked / self.e2e_seconds if self.e2e_seconds else 0.0


def admin_client(url: str, token: str) -> httpx.AsyncClient:
    """The simulated users' client. No keep-alive: a busy server closing an idle connection
    just as a POST goes out would fail a create that must not be retried blindly."""
    return httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(600.0, connect=10.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
    )


async def upload_image(api: httpx.AsyncClient, name: str = "base") -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
        resp = await api.post(f"{API}/images", params={"name": name}, content=path.read_bytes())
    resp.raise_for_status()
    return str(resp.json()["id"])


async def create(
    api: httpx.AsyncClient, *, total: int, batch: int, concurrency: int, flavor: str
) -> Phase:
    """Create ``total`` instances, ``batch`` per request, ``concurrency`` requests at a time."""
    phase = Phase(requested=total)
    latencies: list[float] = []
    remaining = [total]
    t0 = time.monotonic()

    async def worker() -> None:
        while remaining[0] > 0:
            n = min(batch, remaining[0])
            remaining[0] -= n
            t = time.monotonic()
            try:
                resp = await api.post(
                    f"{API}/instances", json={"image": "base", "flavor": flavor, "count": n}
                )
                resp.raise_for_status()
            except httpx.HTTPError:
                phase.errors += 1
                continue
            latencies.append(time.monotonic() - t)
            for inst in resp.json()["instances"]:
                phase.ids.append(inst["id"])
                phase.placed += inst["host_id"] is not None

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.api_seconds = time.monotonic() - t0
    phase.create_latency = Latency.of(latencies)
    return phase


async def wait_acked(
    tracker: Tracker,
    phase: Phase,
    started: float,
    *,
    timeout: float,
    deleted: Sequence[str] = (),
) -> None:
    """Wait until the agents had every created instance acknowledged running (and every
    deleted one deleted); fill in the end-to-end numbers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = sum(1 for i in phase.ids if i in tracker.running)
        gone = sum(1 for i in deleted if i in tracker.deleted)
        if running == len(phase.ids) and gone == len(deleted):
            break
        await asyncio.sleep(0.1)
    times = [tracker.running[i] for i in phase.ids if i in tracker.running]
    times += [tracker.deleted[i] for i in deleted if i in tracker.deleted]
    phase.acked = sum(1 for i in phase.ids if i in tracker.running)
    phase.deletes_acked = sum(1 for i in deleted if i in tracker.deleted)
    phase.e2e_seconds = (max(times) - started) if times else 0.0


async def churn(
    api: httpx.AsyncClient,
    live: list[str],
    *,
    seconds: float,
    concurrency: int,
    flavor: str,
    rng: random.Random,
) -> tuple[Phase, list[str]]:
    """For ``seconds``: each worker deletes a random live instance, then creates one."""
    phase = Phase()
    deleted: list[str] = []
    deadline = time.monotonic() + seconds
    t0 = time.monotonic()

    async def worker() -> None:
        while time.monotonic() < deadline and live:
            victim = live.pop(rng.randrange(len(live)))
            try:
                resp = await api.delete(f"{API}/instances/{victim}")
                resp.raise_for_status()
                deleted.append(victim)
                resp = await api.post(f"{API}/instances", json={"image": "base", "flavor": flavor})
                resp.raise_for_status()
            except httpx.HTTPError:
                phase.errors += 1
                continue
            inst = resp.json()["instances"][0]
            phase.ids.append(inst["id"])
            phase.placed += inst["host_id"] is not None

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.api_seconds = time.monotonic() - t0
    phase.requested = len(phase.ids)
    phase.deleted = len(deleted)
    return phase, deleted


def read_latency(
    url: str, token: str, ids: list[str], *, gets: int, pages: int, rng: random.Random
) -> tuple[Latency, Latency, Latency, int]:
    """Sequential reads from one client: GET one instance (``gets`` random ones); every
    100-item page of the whole list, followed by cursor; ``pages`` 100-item pages at random
    offsets. Returns the three latencies and the total the first page reported."""
    one: list[float] = []
    by_cursor: list[float] = []
    by_offset: list[float] = []
    total = 0
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0
    ) as http:
        http.get(f"{API}/instances/{ids[0]}").raise_for_status()  # warm the connection
        for _ in range(gets):
            t = time.perf_counter()
            http.get(f"{API}/instances/{rng.choice(ids)}").raise_for_status()
            one.append(time.perf_counter() - t)
        params: dict[str, str | int] = {"limit": 100}
        while True:
            t = time.perf_counter()
            resp = http.get(f"{API}/instances", params=params)
            by_cursor.append(time.perf_counter() - t)
            resp.raise_for_status()
            page = resp.json()
            if "cursor" not in params:
                total = int(page["total"])
            if not page.get("next_cursor"):
                break
            params = {"limit": 100, "cursor": page["next_cursor"]}
        for _ in range(pages):
            offset = rng.randrange(max(len(ids) - 100, 1))
            t = time.perf_counter()
            resp = http.get(f"{API}/instances", params={"limit": 100, "offset": offset})
            by_offset.append(time.perf_counter() - t)
            resp.raise_for_status()
    return Latency.of(one), Latency.of(by_cursor), Latency.of(by_offset), total


@dataclass
class Checks:
    hosts: int = 0
    overcommitted_hosts: int = 0
    allocated_instances: int = 0
    domains: int = 0
    duplicated_domains: int = 0
    misplaced_domains: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.overcommitted_hosts == 0
            and self.duplicated_domains == 0
            and self.misplaced_domains == 0
            and self.domains == self.allocated_instances
        )


async def check(api: httpx.AsyncClient, fleet: Fleet) -> Checks:
    """No host holds more than capacity x ratio; every live instance runs exactly once, on
    the host the controller put it on."""
    resp = await api.get(f"{API}/hosts")
    resp.raise_for_status()
    hosts = resp.json()
    out = Checks(hosts=len(hosts))
    for h in hosts:
        over = h["vcpus_allocated"] > h["vcpus"] or h["memory_allocated_mib"] > h["memory_mib"]
        out.overcommitted_hosts += over
        out.allocated_instances += h["instances"]
    placed = await _instance_hosts(api)
    seen: dict[str, int] = {}
    for host_id, domains in fleet.domains().items():
        for d in domains:
            seen[d] = seen.get(d, 0) + 1
            out.misplaced_domains += placed.get(d) != host_id
        out.domains += len(domains)
    out.duplicated_domains = sum(1 for n in seen.values() if n > 1)
    return out


async def _instance_hosts(api: httpx.AsyncClient) -> dict[str, str | None]:
    """Every live instance's host, read page by page."""
    out: dict[str, str | None] = {}
    params: dict[str, str | int] = {"limit": 1000}
    while True:
        resp = await api.get(f"{API}/instances", params=params)
        resp.raise_for_status()
        page = resp.json()
        out.update({i["id"]: i["host_id"] for i in page["items"]})
        if not page["items"] or not page.get("next_cursor"):
            return out
        params = {"limit": 1000, "cursor": page["next_cursor"]}


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0
