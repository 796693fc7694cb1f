"""The reconciler against the fake driver: each desired state, failures, timeouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from stratuslab.agent.image_cache import ImageCache
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.workspace import FakeWorkspace
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.errors import ImageError
from stratuslab.schemas.agent import DesiredInstance, ImageRef
from stratuslab.types import Hypervisor, PowerState

IID = "5e1f0c3a-7d2b-4c6e-9a8f-0123456789ab"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def desired(**changes: object) -> DesiredInstance:
    base: dict[str, object] = {
        "id": IID,
        "name": "vm",
        "hostname": "vm",
        "generation": 1,
        "desired": "running",
        "vcpus": 1,
        "memory_mib": 512,
        "image": ImageRef(id="img", sha256="0" * 64, format="qcow2", size_bytes=1),
        "ssh_port": 22001,
        "ssh_keys": [],
        "user_data": None,
        "reboot_seq": 0,
        "reboot_hard": False,
        "stop_timeout": 10.0,
    }
    base.update(changes)
    return DesiredInstance.model_validate(base)


class Images:
    def ensure(self, ref: ImageRef) -> Path:
        return Path("/fake/base.qcow2")


@pytest.fixture
def setup() -> tuple[Reconciler, FakeComputeDriver, FakeWorkspace, Clock]:
    driver = FakeComputeDriver(shutdown_delay=None)  # the guest ignores ACPI
    workspace = FakeWorkspace()
    clock = Clock()
    return (
        Reconciler(driver, workspace, Images(), hypervisor=Hypervisor.QEMU, clock=clock),
        driver,
        workspace,
        clock,
    )


def test_stop_forces_off_after_timeout(setup) -> None:  # type: ignore[no-untyped-def]
    rec, driver, _ws, clock = setup
    assert rec.converge(desired()).observed.status == "running"
    stop = desired(generation=2, desired="stopped")
    first = rec.converge(stop)
    assert first.observed.status == "stopping"
    assert first.busy
    clock.now = 5.0
    assert rec.converge(stop).observed.status == "stopping"
    clock.now = 10.5
    done = rec.converge(stop)
    assert done.observed.status == "stopped"
    assert done.observed.observed_generation == 2
    assert [e.kind for e in done.events] == ["instance.forced_off"]
    assert driver.state(IID) is PowerState.SHUTOFF


def test_guest_powering_itself_off_is_reported_stopped_not_restarted(setup) -> None:  # type: ignore[no-untyped-def]
    rec, driver, _ws, _clock = setup
    rec.converge(desired())
    driver.guest_poweroff(IID)
    result = rec.converge(desired())
    assert result.observed.status == "stopped"
    assert "powered itself off" in result.observed.reason
    assert driver.state(IID) is PowerState.SHUTOFF


def test_reboot_is_served_once(setup) -> None:  # type: ignore[no-untyped-def]
    rec, _driver, _ws, _clock = setup
    rec.converge(desired())
    reboot = desired(generation=2, reboot_seq=1)
    assert [e.kind for e in rec.converge(reboot).events] == ["instance.rebooted"]
    assert rec.converge(reboot).events == []


def test_failure_is_sticky_for_its_generation(setup) -> None:  # type: ignore[no-untyped-def]
    rec, driver, ws, _clock = setup
    driver.fail_on.add("define")
    failed = rec.converge(desired())
    assert failed.observed.status == "failed"
    assert "injected failure" in failed.observed.reason
    driver.fail_on.clear()
    assert rec.converge(desired()).observed.status == "failed"  # same generation: no retry
    assert ws.instance_ids() == set()
    assert rec.converge(desired(generation=2)).observed.status == "running"  # `start` retries


def test_delete_and_garbage_collection(setup) -> None:  # type: ignore[no-untyped-def]
    rec, driver, ws, _clock = setup
    rec.converge(desired())
    assert rec.converge(desired(generation=2, desired="deleted")).observed.status == "deleted"
    assert driver.state(IID) is PowerState.MISSING
    rec.converge(desired(generation=3))
    events = rec.collect_garbage(keep=set())
    assert [e.kind for e in events] == ["host.fenced"]
    assert ws.instance_ids() == set()


class Source:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    def download_image(self, image_id: str, dest: Path) -> str:
        self.calls += 1
        dest.write_bytes(self.data)
        return hashlib.sha256(self.data).hexdigest()


def test_image_cache_verifies_and_downloads_once(tmp_path: Path) -> None:
    data = b"disk image bytes"
    source = Source(data)
    cache = ImageCache(tmp_path / "images", source)
    ref = ImageRef(
        id="i", sha256=hashlib.sha256(data).hexdigest(), format="qcow2", size_bytes=len(data)
    )
    path = cache.ensure(ref)
    assert path.read_bytes() == data
    assert cache.ensure(ref) == path
    assert source.calls == 1


def test_image_cache_refuses_a_checksum_mismatch_and_keeps_nothing(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "images", Source(b"tampered"))
    ref = ImageRef(id="i", sha256="1" * 64, format="qcow2", size_bytes=8)
    with pytest.raises(ImageError, match="does not match") as caught:
        cache.ensure(ref)
    assert caught.value.code == "checksum_mismatch"
    assert list((tmp_path / "images").iterdir()) == []


class AwayImages:
    def ensure(self, ref: ImageRef) -> Path:
        from stratuslab.errors import ServiceUnavailable

        raise ServiceUnavailable("controller restarting", hint="the agent retries")


def test_controller_away_is_not_an_instance_failure() -> None:
    from stratuslab.errors import ServiceUnavailable

    driver = FakeComputeDriver()
    workspace = FakeWorkspace()
    rec = Reconciler(driver, workspace, AwayImages(), hypervisor=Hypervisor.QEMU)
    with pytest.raises(ServiceUnavailable):
        rec.converge(desired())
    assert workspace.instance_ids() == set()
    rec.images = Images()
    assert rec.converge(desired()).observed.status == "running"  # retried, not sticky-failed
