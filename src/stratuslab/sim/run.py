"""One simulation run: controller process + fleet of fake agents + simulated users."""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stratuslab.sim.agents import Fleet, FleetShape
from stratuslab.sim.controller import ControllerProcess
from stratuslab.sim.database import database_size, fresh_database, is_postgres
from stratuslab.sim.workload import (
    Checks,
    Latency,
    Phase,
    admin_client,
    check,
    churn,
    create,
    read_latency,
    upload_image,
    wait_acked,
)


@dataclass
class SimConfig:
    hosts: int = 2500
    instances: int = 50000
    #: None: SQLite; a PostgreSQL server URL: a fresh database is made on it
    database_url: str | None = None
    host_vcpus: int = 32
    host_memory_mib: int = 131072
    flavor: str = "t1.micro"
    batch: int = 100
    concurrency: int = 4
    churn_seconds: float = 20.0
    churn_concurrency: int = 4
    gets: int = 500
    pages: int = 100
    #: long-poll wait the agents ask for (the controller caps it at max_wait)
    long_poll: float = 60.0
    heartbeat_interval: float = 60.0
    restart: bool = True
    data_dir: Path | None = None
    keep_database: bool = False
    seed: int = 1
    #: run the controller under the sampling profiler; profiles per phase land here
    profile_dir: Path | None = None


@dataclass
class SimReport:
    backend: str
    hosts: int
    instances: int
    join_seconds: float = 0.0
    first_sync_seconds: float = 0.0
    fill: Phase = field(default_factory=Phase)
    fill_controller_cpu_s: float = 0.0
    churn: Phase = field(default_factory=Phase)
    idle_controller_cpu: float = 0.0
    get_one: Latency | None = None
    #: every 100-item page of the list, followed by cursor
    get_page: Latency | None = None
    #: 100-item pages at random offsets (the way before cursors)
    get_offset_page: Latency | None = None
    listed_total: int = 0
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    database_bytes: int = 0
    restart_serving_s: float = 0.0
    restart_converged_s: float | None = None
    agent_errors: int = 0
    checks: Checks = field(default_factory=Checks)
    #: steps that failed (the run goes on; the numbers of that step are missing)
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for phase in ("fill", "churn"):
            data[phase].pop("ids", None)
            data[phase]["placements_per_s"] = getattr(self, phase).placements_per_s
            data[phase]["acked_per_s"] = getattr(self, phase).acked_per_s
        data["checks"]["ok"] = self.checks.ok
        return data


def run(config: SimConfig) -> SimReport:
    if config.data_dir is not None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_run(config, config.data_dir))
    with tempfile.TemporaryDirectory(prefix="stratus-sim-") as tmp:
        return asyncio.run(_run(config, Path(tmp)))


async def _run(config: SimConfig, data_dir: Path) -> SimReport:
    backend = "postgresql" if config.database_url and is_postgres(config.database_url) else "sqlite"
    report = SimReport(backend=backend, hosts=config.hosts, instances=config.instances)
    with fresh_database(config.database_url, data_dir, keep=config.keep_database) as url:
        ctrl = ControllerProcess(
            data_dir / "controller",
            url,
            settings={"heartbeat_grace": str(max(600.0, 10 * config.heartbeat_interval))},
            profile_dir=config.profile_dir,
        )
        await asyncio.to_thread(ctrl.init)
        await asyncio.to_thread(ctrl.start)
        try:
            await _scenario(config, ctrl, url, report)
        finally:
            ctrl.stop()
    return report


async def _scenario(
    config: SimConfig, ctrl: ControllerProcess, url: str, report: SimReport
) -> None:
    rng = random.Random(config.seed)
    shape = FleetShape(config.hosts, config.host_vcpus, config.host_memory_mib)
    fleet = Fleet(ctrl.url, ctrl.admin_token, shape)
    api = admin_client(ctrl.url, ctrl.admin_token)
    try:
        await upload_image(api)
        report.join_seconds = await fleet.join()
        t = time.monotonic()
        fleet.start(wait=config.long_poll, heartbeat_interval=config.heartbeat_interval)
        report.first_sync_seconds = await fleet.wait_synced(t, timeout=300) or -1.0
        ctrl.dump_profile()  # profile-1: join and first sync
        live = await _fill_and_churn(config, ctrl, api, fleet, report, rng)
        report.idle_controller_cpu = await _idle_cpu(ctrl, seconds=5.0)
        ctrl.dump_profile()  # profile-4: idle
        async with _step(report, "read latency"):
            get_one, get_page, get_offset_page, total = await asyncio.to_thread(
                read_latency,
                ctrl.url,
                ctrl.admin_token,
                live,
                gets=config.gets,
                pages=config.pages,
                rng=rng,
            )
            report.get_one, report.get_page, report.listed_total = get_one, get_page, total
            report.get_offset_page = get_offset_page
        ctrl.dump_profile()  # profile-5: read latency
        report.rss_bytes, report.peak_rss_bytes = ctrl.memory()
        report.database_bytes = await asyncio.to_thread(database_size, url)
        async with _step(report, "checks"):
            report.checks = await check(api, fleet)
        if config.restart:
            t = time.monotonic()
            report.restart_serving_s = await asyncio.to_thread(ctrl.restart)
            report.restart_converged_s = await fleet.wait_synced(t, timeout=600)
        report.agent_errors = sum(a.errors for a in fleet.agents)
    finally:
        await fleet.close()
        await api.aclose()


async def _fill_and_churn(
    config: SimConfig,
    ctrl: ControllerProcess,
    api: Any,
    fleet: Fleet,
    report: SimReport,
    rng: random.Random,
) -> list[str]:
    timeout = max(300.0, config.instances / 20)
    cpu0 = ctrl.cpu_seconds()
    t0 = time.monotonic()
    report.fill = await create(
        api,
        total=config.instances,
        batch=config.batch,
        concurrency=config.concurrency,
        flavor=config.flavor,
    )
    await wait_acked(fleet.tracker, report.fill, t0, timeout=timeout)
    report.fill_controller_cpu_s = ctrl.cpu_seconds() - cpu0
    ctrl.dump_profile()  # profile-2: fill
    live = list(report.fill.ids)
    if config.churn_seconds > 0:
        t0 = time.monotonic()
        report.churn, deleted = await churn(
            api,
            live,
            seconds=config.churn_seconds,
            concurrency=config.churn_concurrency,
            flavor=config.flavor,
            rng=rng,
        )
        await wait_acked(fleet.tracker, report.churn, t0, timeout=timeout, deleted=deleted)
        live.extend(report.churn.ids)
    ctrl.dump_profile()  # profile-3: churn (empty without churn)
    return live


@contextlib.asynccontextmanager
async def _step(report: SimReport, name: str) -> AsyncIterator[None]:
    """Record a failed step and go on with the next one."""
    try:
        yield
    except (httpx.HTTPError, OSError, ValueError) as exc:
        report.failures.append(f"{name}: {type(exc).__name__}: {exc}")


async def _idle_cpu(ctrl: ControllerProcess, *, seconds: float) -> float:
    """The controller's CPU use (cores) while nothing changes and every agent long-polls."""
    c0, t0 = ctrl.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return (ctrl.cpu_seconds() - c0) / (time.monotonic() - t0)
