"""One suite, every compute driver: the fake and libvirt (through libvirt's test driver).

The same assertions hold for both. Deliberate differences of the backends, and how the
suite absorbs them:

* libvirt's test driver powers a domain off at once on ``shutdown`` (no guest, no ACPI);
  the fake may take some :meth:`state` polls. The suite polls until shut off.
* the test driver ignores ``<qemu:commandline>`` and never runs QEMU, so networking, the
  console log and real boots are covered by ``tests/functional/test_libvirt_driver.py``.
* libvirt reports the host's CPU model as ``arch`` (``i686`` for the test driver); the
  suite only checks that capabilities are plausible.
* ``test:///default`` forgets its domains when its last connection closes (a real daemon
  does not); the fixture holds a second connection open for the length of each test.
* libvirt canonicalises UUIDs and rejects malformed ones; the fake does the same.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratuslab.drivers.base import (
    DOMAIN_PREFIX,
    ComputeDriver,
    DiskSpec,
    DomainSpec,
    DomainStatus,
    HostCapabilities,
)
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.drivers.libvirt import LibvirtComputeDriver
from stratuslab.drivers.registry import get_compute_driver
from stratuslab.errors import DriverError, InvalidInput
from stratuslab.types import Hypervisor, PowerState


class Tracked:
    """A driver plus the uuids a test defined, so teardown can remove them."""

    def __init__(self, driver: ComputeDriver, tmp_path: Path) -> None:
        self.driver = driver
        self.tmp_path = tmp_path
        self.uuids: list[str] = []

    def spec(
        self, name: str | None = None, uuid: str | None = None, **changes: object
    ) -> DomainSpec:
        uuid = uuid or str(uuidlib.uuid4())
        self.uuids.append(uuid)
        fields: dict[str, object] = {
            "uuid": uuid,
            "name": name or f"{DOMAIN_PREFIX}ct-{uuid[:8]}",
            "vcpus": 1,
            "memory_mib": 128,
            "disks": (DiskSpec(path=self.tmp_path / f"{uuid}.qcow2"),),
            "console_log": self.tmp_path / f"{uuid}.log",
        }
        fields.update(changes)
        return DomainSpec(**fields)  # type: ignore[arg-type]

    def defined(self, **changes: object) -> DomainSpec:
        spec = self.spec(**changes)  # type: ignore[arg-type]
        self.driver.define(spec)
        return spec

    def running(self, **changes: object) -> DomainSpec:
        spec = self.defined(**changes)
        self.driver.start(spec.uuid)
        return spec


@pytest.fixture(params=["fake", "libvirt-test"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tracked]:
    driver: ComputeDriver
    # test:///default keeps its domains only while some connection is open (a real daemon
    # keeps them for good); ``keeper`` holds one so a test can close and reopen ``driver``.
    keeper = LibvirtComputeDriver("test:///default")
    keeper.capabilities()
    if request.param == "fake":
        driver = FakeComputeDriver("fake-host", vcpus=8, memory_mib=16384)
    else:
        driver = LibvirtComputeDriver("test:///default")
    tracked = Tracked(driver, tmp_path)
    yield tracked
    for uuid in tracked.uuids:
        driver.undefine(uuid)
    driver.close()
    keeper.close()


def wait_for(driver: ComputeDriver, uuid: str, state: PowerState, polls: int = 20) -> PowerState:
    seen = driver.state(uuid)
    for _ in range(polls):
        if seen is state:
            break
        seen = driver.state(uuid)
    return seen


def missing_uuid() -> str:
    return str(uuidlib.uuid4())


# -- shape ---------------------------------------------------------------------------------


def test_satisfies_the_protocol(env: Tracked) -> None:
    assert isinstance(env.driver, ComputeDriver)
    assert env.driver.name in {"fake", "libvirt"}


def test_capabilities_describe_the_host(env: Tracked) -> None:
    caps = env.driver.capabilities()
    assert isinstance(caps, HostCapabilities)
    assert caps.hostname
    assert caps.arch
    assert caps.vcpus > 0
    assert caps.memory_mib > 0
    assert caps.hypervisor is Hypervisor.QEMU


# -- define / state / list -----------------------------------------------------------------


def test_unknown_and_malformed_uuids_are_missing(env: Tracked) -> None:
    assert env.driver.state(missing_uuid()) is PowerState.MISSING
    assert env.driver.state("not-a-uuid") is PowerState.MISSING


def test_define_gives_a_shut_off_domain(env: Tracked) -> None:
    spec = env.defined()
    assert env.driver.state(spec.uuid) is PowerState.SHUTOFF
    assert DomainStatus(spec.uuid, spec.name, PowerState.SHUTOFF) in env.driver.list_domains()


def test_define_twice_redefines(env: Tracked) -> None:
    spec = env.defined()
    env.driver.define(DomainSpec(**{**spec.__dict__, "vcpus": 2}))
    assert env.driver.state(spec.uuid) is PowerState.SHUTOFF
    assert [s.uuid for s in env.driver.list_domains()].count(spec.uuid) == 1


def test_redefining_a_running_domain_keeps_it_running(env: Tracked) -> None:
    spec = env.running()
    env.driver.define(DomainSpec(**{**spec.__dict__, "memory_mib": 256}))
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


def test_define_refuses_a_name_taken_by_another_uuid(env: Tracked) -> None:
    spec = env.defined()
    with pytest.raises(DriverError):
        env.driver.define(env.spec(name=spec.name))


def test_define_refuses_renaming_a_uuid(env: Tracked) -> None:
    spec = env.defined()
    with pytest.raises(DriverError):
        env.driver.define(DomainSpec(**{**spec.__dict__, "name": spec.name + "-renamed"}))


def test_define_refuses_a_malformed_uuid(env: Tracked) -> None:
    with pytest.raises(DriverError):
        env.driver.define(env.spec(uuid="not-a-uuid"))


def test_list_shows_only_prefixed_domains_sorted(env: Tracked) -> None:
    specs = [env.running(), env.defined(), env.defined()]
    foreign = env.defined(name=f"other-{uuidlib.uuid4().hex[:8]}")
    listed = env.driver.list_domains()
    assert all(status.name.startswith(DOMAIN_PREFIX) for status in listed)
    assert foreign.uuid not in {status.uuid for status in listed}
    assert [s.name for s in listed] == sorted(s.name for s in listed)
    states = {status.uuid: status.state for status in listed}
    assert [states[spec.uuid] for spec in specs] == [
        PowerState.RUNNING,
        PowerState.SHUTOFF,
        PowerState.SHUTOFF,
    ]


# -- power ---------------------------------------------------------------------------------


def test_start_runs_and_is_idempotent(env: Tracked) -> None:
    spec = env.defined()
    env.driver.start(spec.uuid)
    assert env.driver.state(spec.uuid) is PowerState.RUNNING
    env.driver.start(spec.uuid)
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


@pytest.mark.parametrize("method", ["start", "shutdown", "reboot", "reset"])
def test_acting_on_an_unknown_domain_fails(env: Tracked, method: str) -> None:
    with pytest.raises(DriverError, match="no domain"):
        getattr(env.driver, method)(missing_uuid())


def test_shutdown_powers_off(env: Tracked) -> None:
    spec = env.running()
    env.driver.shutdown(spec.uuid)
    assert wait_for(env.driver, spec.uuid, PowerState.SHUTOFF) is PowerState.SHUTOFF


def test_shutdown_of_a_shut_off_domain_does_nothing(env: Tracked) -> None:
    spec = env.defined()
    env.driver.shutdown(spec.uuid)
    assert env.driver.state(spec.uuid) is PowerState.SHUTOFF


def test_destroy_forces_off_and_is_idempotent(env: Tracked) -> None:
    spec = env.running()
    env.driver.destroy(spec.uuid)
    assert env.driver.state(spec.uuid) is PowerState.SHUTOFF
    env.driver.destroy(spec.uuid)
    env.driver.destroy(missing_uuid())
    assert env.driver.state(spec.uuid) is PowerState.SHUTOFF


def test_a_destroyed_domain_starts_again(env: Tracked) -> None:
    spec = env.running()
    env.driver.destroy(spec.uuid)
    env.driver.start(spec.uuid)
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


@pytest.mark.parametrize("method", ["reboot", "reset"])
def test_reboot_and_reset_keep_running(env: Tracked, method: str) -> None:
    spec = env.running()
    getattr(env.driver, method)(spec.uuid)
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


@pytest.mark.parametrize("method", ["reboot", "reset"])
def test_reboot_and_reset_need_a_running_domain(env: Tracked, method: str) -> None:
    spec = env.defined()
    with pytest.raises(DriverError):
        getattr(env.driver, method)(spec.uuid)
    assert env.driver.state(spec.uuid) is PowerState.SHUTOFF


# -- undefine / close ----------------------------------------------------------------------


@pytest.mark.parametrize("start", [False, True])
def test_undefine_removes_and_is_idempotent(env: Tracked, start: bool) -> None:
    spec = env.running() if start else env.defined()
    env.driver.undefine(spec.uuid)
    assert env.driver.state(spec.uuid) is PowerState.MISSING
    assert spec.uuid not in {status.uuid for status in env.driver.list_domains()}
    env.driver.undefine(spec.uuid)
    env.driver.undefine(missing_uuid())


def test_an_undefined_domain_cannot_start(env: Tracked) -> None:
    spec = env.defined()
    env.driver.undefine(spec.uuid)
    with pytest.raises(DriverError):
        env.driver.start(spec.uuid)


def test_close_is_idempotent_and_the_driver_reconnects(env: Tracked) -> None:
    spec = env.defined()
    env.driver.close()
    env.driver.close()
    assert env.driver.state(spec.uuid) is PowerState.SHUTOFF


# -- the fake's extras (not part of the protocol) ------------------------------------------


@pytest.fixture
def fake() -> FakeComputeDriver:
    return FakeComputeDriver("h1", vcpus=4, memory_mib=8192, hypervisor=Hypervisor.KVM)


def fake_spec(tmp_path: Path) -> DomainSpec:
    return Tracked(FakeComputeDriver(), tmp_path).spec()


def test_fake_reports_its_constructor_arguments(fake: FakeComputeDriver) -> None:
    assert fake.capabilities() == HostCapabilities("h1", "x86_64", 4, 8192, Hypervisor.KVM)


def test_fake_shutdown_can_take_state_polls(tmp_path: Path) -> None:
    driver = FakeComputeDriver(shutdown_delay=2)
    spec = fake_spec(tmp_path)
    driver.define(spec)
    driver.start(spec.uuid)
    driver.shutdown(spec.uuid)
    seen = [driver.state(spec.uuid) for _ in range(3)]
    assert seen == [PowerState.RUNNING, PowerState.RUNNING, PowerState.SHUTOFF]


def test_fake_guest_can_ignore_acpi(tmp_path: Path) -> None:
    driver = FakeComputeDriver(shutdown_delay=None)
    spec = fake_spec(tmp_path)
    driver.define(spec)
    driver.start(spec.uuid)
    driver.shutdown(spec.uuid)
    assert wait_for(driver, spec.uuid, PowerState.SHUTOFF) is PowerState.RUNNING
    driver.destroy(spec.uuid)
    assert driver.state(spec.uuid) is PowerState.SHUTOFF


def test_fake_injects_failures_before_changing_anything(
    fake: FakeComputeDriver, tmp_path: Path
) -> None:
    spec = fake_spec(tmp_path)
    fake.define(spec)
    fake.fail_on.add("start")
    with pytest.raises(DriverError, match=r"injected failure in fake\.start"):
        fake.start(spec.uuid)
    assert fake.state(spec.uuid) is PowerState.SHUTOFF
    fake.fail_on.clear()
    fake.start(spec.uuid)
    assert fake.state(spec.uuid) is PowerState.RUNNING


def test_fake_rejects_unknown_failure_points() -> None:
    with pytest.raises(ValueError, match="stat"):
        FakeComputeDriver(fail_on={"stat"})


def test_fake_guest_poweroff_and_crash(fake: FakeComputeDriver, tmp_path: Path) -> None:
    spec = fake_spec(tmp_path)
    fake.define(spec)
    fake.start(spec.uuid)
    fake.crash(spec.uuid)
    assert fake.state(spec.uuid) is PowerState.CRASHED
    fake.start(spec.uuid)
    fake.guest_poweroff(spec.uuid)
    assert fake.state(spec.uuid) is PowerState.SHUTOFF


def test_fake_is_thread_safe(fake: FakeComputeDriver, tmp_path: Path) -> None:
    specs = [fake_spec(tmp_path) for _ in range(200)]

    def cycle(spec: DomainSpec) -> None:
        fake.define(spec)
        fake.start(spec.uuid)
        fake.reboot(spec.uuid)
        fake.shutdown(spec.uuid)
        fake.list_domains()

    threads = [threading.Thread(target=cycle, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {s.state for s in fake.list_domains()} == {PowerState.SHUTOFF}
    assert len(fake.list_domains()) == len(specs)


# -- registry ------------------------------------------------------------------------------


def test_registry_builds_drivers_by_name() -> None:
    fake = get_compute_driver("fake", hostname="h2", vcpus=2, memory_mib=1024)
    assert isinstance(fake, FakeComputeDriver)
    assert fake.capabilities().hostname == "h2"
    libvirt = get_compute_driver("libvirt", uri="test:///default")
    assert isinstance(libvirt, LibvirtComputeDriver)
    libvirt.close()


def test_registry_names_the_known_drivers() -> None:
    with pytest.raises(InvalidInput) as caught:
        get_compute_driver("xen")
    assert "fake" in caught.value.hint
    assert "libvirt" in caught.value.hint
