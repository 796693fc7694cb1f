"""``stratus-node``: join a cloud (once), then run the agent."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click

from stratuslab.agent.controller import ControllerLink
from stratuslab.agent.image_cache import FakeImageCache, ImageCache
from stratuslab.agent.loop import Agent, host_capacity
from stratuslab.agent.networks import build_networks
from stratuslab.agent.reconcile import Images, Reconciler, Saver
from stratuslab.agent.volumes import VolumeLink, attach_pool, close_pool
from stratuslab.agent.workspace import (
    FakeWorkspace,
    LocalWorkspace,
    RootDiskSaver,
    Workspace,
    check_traversable,
)
from stratuslab.config import NodeSettings, load_node_settings
from stratuslab.drivers.base import ComputeDriver
from stratuslab.drivers.libvirt.kvm_probe import check_kvm_device
from stratuslab.drivers.registry import get_compute_driver
from stratuslab.errors import InvalidInput, StratusError
from stratuslab.schemas.agent import HostCapacity, JoinRequest
from stratuslab.types import Hypervisor

CREDENTIAL_FILE = "credential.json"


def make_driver(settings: NodeSettings) -> ComputeDriver:
    if settings.driver == "fake":
        return get_compute_driver("fake", hostname=settings.hostname or "fake-host")
    options: dict[str, Any] = {
        "uri": settings.libvirt_uri,
        "kvm_probe_cache": settings.state_dir / "kvm-probe.json",
    }
    if settings.hypervisor:
        options["hypervisor"] = Hypervisor(settings.hypervisor)
    return get_compute_driver(settings.driver, **options)


def join(settings: NodeSettings, driver: ComputeDriver, url: str, token: str) -> dict[str, str]:
    link = ControllerLink(url)
    try:
        capacity = capacity_of(settings, driver)
        resp = link.join(JoinRequest(token=token, capacity=capacity))
    finally:
        link.close()
    cred = {"controller_url": url, "host_id": resp.host_id, "credential": resp.credential}
    path = settings.state_dir / CREDENTIAL_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cred))
    tmp.chmod(0o600)
    tmp.replace(path)
    return cred


def load_credential(settings: NodeSettings) -> dict[str, str]:
    path = settings.state_dir / CREDENTIAL_FILE
    try:
        data: dict[str, str] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidInput(
            f"this node has not joined a cloud yet ({path} is missing)",
            hint="run `stratus-node --join URL TOKEN` with a token from `stratus admin host token`",
        ) from exc
    return data


def build_agent(settings: NodeSettings, driver: ComputeDriver, cred: dict[str, str]) -> Agent:
    link = VolumeLink(cred["controller_url"], cred["credential"])
    workspace: Workspace
    images: Images
    saver: Saver | None = None
    if settings.driver == "fake":
        workspace, images = FakeWorkspace(), FakeImageCache()
    else:
        local = LocalWorkspace(settings.state_dir)
        workspace, saver = local, RootDiskSaver(local, link)
        images = ImageCache(
            settings.state_dir / "images",
            link,
            max_bytes=int(settings.image_cache_max_gib * 2**30) or None,
            in_use=local.bases_in_use,
        )
    hypervisor = driver.capabilities().hypervisor
    root_disk = (
        (lambda iid: local.dir(iid) / "root.qcow2")
        if isinstance(workspace, LocalWorkspace)
        else (lambda iid: Path(f"/fake/{iid}/root.qcow2"))
    )
    volumes = attach_pool(settings, link, images, root_disk)
    reconciler = Reconciler(
        driver,
        workspace,
        images,
        hypervisor=hypervisor,
        saver=saver,
        volumes=volumes,
        connect=_connector(settings, hypervisor),
        migration_uri=settings.migration_uri,
        migration_stream=settings.migration_stream,
    )
    reconciler.networks = build_networks(settings)
    return Agent(
        link,
        reconciler,
        workspace,
        lambda: capacity_of(settings, driver),
        heartbeat_interval=settings.heartbeat_interval,
        resync_interval=settings.resync_interval,
        full_resync_interval=settings.full_resync_interval,
        self_fence_after=settings.self_fence_after,
        cached_images=(
            (lambda: [p.stem for p in images.cached()]) if isinstance(images, ImageCache) else None
        ),
    )


def _connector(
    settings: NodeSettings, hypervisor: Hypervisor
) -> Callable[[str], ComputeDriver] | None:
    """How this node opens another host's hypervisor (the source of a live migration)."""
    if settings.driver != "libvirt" or not settings.migration_uri:
        return None
    return lambda uri: get_compute_driver("libvirt", uri=uri, hypervisor=hypervisor)


def capacity_of(settings: NodeSettings, driver: ComputeDriver) -> HostCapacity:
    return host_capacity(
        driver,
        settings.state_dir,
        settings.hostname,
        labels=settings.labels,
        migration_uri=settings.migration_uri,
    )


@click.command()
@click.option("--join", "join_args", nargs=2, metavar="URL TOKEN", help="join a cloud first")
@click.option("--state-dir", type=click.Path(path_type=Path))
@click.option("--driver", type=click.Choice(["libvirt", "fake"]))
@click.option("--libvirt-uri")
@click.option("--hypervisor", type=click.Choice(["kvm", "qemu"]), help="skip the KVM probe")
@click.option("--hostname")
@click.option("-v", "--verbose", is_flag=True)
def cli(
    join_args: tuple[str, str] | None,
    state_dir: Path | None,
    driver: str | None,
    libvirt_uri: str | None,
    hypervisor: str | None,
    hostname: str | None,
    verbose: bool,
) -> None:
    """Run the StratusLab node agent on this hypervisor host."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides = {
        "state_dir": state_dir,
        "driver": driver,
        "libvirt_uri": libvirt_uri,
        "hypervisor": hypervisor,
        "hostname": hostname,
    }
    settings = load_node_settings(overrides={k: v for k, v in overrides.items() if v})
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if settings.driver != "fake":
        check_traversable(settings.state_dir)  # before a join token is spent
        problem = check_kvm_device()
        if problem is not None:
            logging.warning("%s", problem)
    compute = make_driver(settings)
    if join_args:
        cred = join(settings, compute, *join_args)
        logging.info("joined %s as host %s", cred["controller_url"], cred["host_id"])
    else:
        cred = load_credential(settings)
    agent = build_agent(settings, compute, cred)

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        agent.run()
    finally:
        close_pool(agent.link)
        compute.close()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except StratusError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"  hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
