"""Live migration (the LiveMigrationDriver capability): the fake and libvirt's test driver.

libvirt's test driver cannot migrate at all (``virDomainMigrateToURI3`` with PEER2PEER is
"argument unsupported: p2p migration is not supported by the source host", ``migrate3`` is
``VIR_ERR_NO_SUPPORT``; ``abortJob`` and ``jobInfo`` are unsupported too). So both drivers
are held to the same checks made before any job starts (domain state, destination spec,
reachability, same host, clashing domains on the destination, a spec that changes the
disks), and to the error a migration proper gives: the fake moves the domain, the libvirt
driver reports ``migration_unsupported`` with the domain still running on the source. The
real thing, between two libvirt daemons running QEMU, is
``tests/functional/test_live_migration.py``.

The destinations:

* fake: a second :class:`FakeComputeDriver` in the same :class:`FakeHypervisors`;
* libvirt: ``test:///PATH/node.xml``, a private test driver per connection loaded from a file
  (domains in the file run), so the destination's domains are written to the file.
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stratuslab.drivers.base import (
    DOMAIN_PREFIX,
    MIGRATION_CONFLICT,
    MIGRATION_NOT_RUNNING,
    MIGRATION_REFUSED,
    MIGRATION_SAME_HOST,
    MIGRATION_UNREACHABLE,
    MIGRATION_UNSUPPORTED,
    DiskSpec,
    DomainSpec,
    LiveMigrationDriver,
    MigrationOptions,
    NicSpec,
    PortForward,
    VolumeAttachment,
)
from stratuslab.drivers.fake import FakeComputeDriver, FakeHypervisors
from stratuslab.drivers.libvirt import LibvirtComputeDriver
from stratuslab.drivers.libvirt.domain_xml import domain_xml
from stratuslab.drivers.libvirt.migrate import destination_xml, writable_file_disks
from stratuslab.errors import Conflict, DriverError, HypervisorUnavailable, InvalidInput
from stratuslab.types import PowerState


class Env:
    """A source driver, and a way to make destinations holding given domains."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.uuids: list[str] = []
        self.hypervisors = FakeHypervisors()
        self.source: LiveMigrationDriver
        if kind == "fake":
            self.fake = FakeComputeDriver("src", hypervisors=self.hypervisors)
            self.source = self.fake
            self.source_uri = self.fake.uri
            self.unreachable_uri = "fake://nowhere/"
        else:
            self.libvirt = LibvirtComputeDriver("test:///default")
            self.source = self.libvirt
            self.source_uri = "test:///default"
            self.unreachable_uri = "test+unix:///default?socket=/nonexistent/libvirt-sock"

    @property
    def driver(self) -> FakeComputeDriver | LibvirtComputeDriver:
        return self.fake if self.kind == "fake" else self.libvirt

    def spec(self, *, name: str | None = None, uuid: str | None = None) -> DomainSpec:
        uuid = uuid or str(uuidlib.uuid4())
        self.uuids.append(uuid)
        return DomainSpec(
            uuid=uuid,
            name=name or f"{DOMAIN_PREFIX}mig-{uuid[:8]}",
            vcpus=1,
            memory_mib=128,
            disks=(DiskSpec(path=self.tmp_path / f"{uuid}.qcow2"),),
            console_log=self.tmp_path / f"{uuid}.log",
        )

    def running(self) -> DomainSpec:
        spec = self.spec()
        self.driver.define(spec)
        self.driver.start(spec.uuid)
        return spec

    def destination(self, *running: DomainSpec) -> tuple[str, Callable[[str], PowerState]]:
        """A destination URI running ``running``, and how to read a domain's state there."""
        if self.kind == "fake":
            dest = FakeComputeDriver("dst", hypervisors=self.hypervisors)
            for spec in running:
                dest.define(spec)
                dest.start(spec.uuid)
            return dest.uri, dest.state
        node = self.tmp_path / f"node-{uuidlib.uuid4().hex[:8]}.xml"
        node.write_text("<node>\n" + "".join(domain_xml(spec) for spec in running) + "</node>\n")
        uri = f"test://{node}"

        def state(uuid: str) -> PowerState:
            reader = LibvirtComputeDriver(uri)  # a fresh private driver, as the file says
            try:
                return reader.state(uuid)
            finally:
                reader.close()

        return uri, state

    def close(self) -> None:
        for uuid in self.uuids:
            self.driver.undefine(uuid)
        self.driver.close()


@pytest.fixture(params=["fake", "libvirt-test"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    keeper = LibvirtComputeDriver("test:///default")  # test:///default lives while one is open
    keeper.capabilities()
    environment = Env(str(request.param), tmp_path)
    yield environment
    environment.close()
    keeper.close()


def test_offers_the_capability(env: Env) -> None:
    assert isinstance(env.source, LiveMigrationDriver)


def test_an_unknown_domain_cannot_migrate(env: Env) -> None:
    dest_uri, _ = env.destination()
    with pytest.raises(DriverError, match="no domain"):
        env.source.migrate_live(str(uuidlib.uuid4()), dest_uri)


def test_a_shut_off_domain_cannot_live_migrate(env: Env) -> None:
    spec = env.spec()
    env.driver.define(spec)
    dest_uri, _ = env.destination()
    with pytest.raises(Conflict) as caught:
        env.source.migrate_live(spec.uuid, dest_uri)
    assert caught.value.code == MIGRATION_NOT_RUNNING
    assert env.driver.state(spec.uuid) is PowerState.SHUTOFF


@pytest.mark.parametrize("change", ["uuid", "name"])
def test_the_destination_spec_must_be_the_same_domain(env: Env, change: str) -> None:
    spec = env.running()
    other = {"uuid": str(uuidlib.uuid4())} if change == "uuid" else {"name": spec.name + "-x"}
    dest_uri, _ = env.destination()
    with pytest.raises(InvalidInput):
        env.source.migrate_live(spec.uuid, dest_uri, dest=dataclasses.replace(spec, **other))
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


def test_an_unreachable_destination(env: Env) -> None:
    spec = env.running()
    with pytest.raises(HypervisorUnavailable) as caught:
        env.source.migrate_live(spec.uuid, env.unreachable_uri)
    assert caught.value.code == MIGRATION_UNREACHABLE
    assert env.unreachable_uri in caught.value.message
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


def test_migrating_to_the_same_hypervisor_is_refused(env: Env) -> None:
    spec = env.running()
    with pytest.raises(Conflict) as caught:
        env.source.migrate_live(spec.uuid, env.source_uri)
    assert caught.value.code == MIGRATION_SAME_HOST
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


def test_a_destination_already_running_it_is_refused(env: Env) -> None:
    spec = env.running()
    dest_uri, _ = env.destination(spec)
    with pytest.raises(Conflict) as caught:
        env.source.migrate_live(spec.uuid, dest_uri)
    assert caught.value.code == MIGRATION_CONFLICT
    assert "already runs there" in caught.value.message
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


@pytest.mark.parametrize("clash", ["name", "uuid"])
def test_a_destination_with_a_clashing_domain_is_refused(env: Env, clash: str) -> None:
    spec = env.running()
    if clash == "name":
        other = DomainSpec(**{**spec.__dict__, "uuid": str(uuidlib.uuid4())})
    else:
        other = DomainSpec(**{**spec.__dict__, "name": f"{DOMAIN_PREFIX}other"})
    dest_uri, _ = env.destination(other)
    with pytest.raises(Conflict) as caught:
        env.source.migrate_live(spec.uuid, dest_uri)
    assert caught.value.code == MIGRATION_CONFLICT
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


def test_a_destination_spec_cannot_add_disks(env: Env) -> None:
    spec = env.running()
    extra = DiskSpec(path=env.tmp_path / "extra.qcow2", target="vdb")
    dest_uri, _ = env.destination()
    with pytest.raises(InvalidInput, match="vdb"):
        env.source.migrate_live(
            spec.uuid, dest_uri, dest=dataclasses.replace(spec, disks=(*spec.disks, extra))
        )
    assert env.driver.state(spec.uuid) is PowerState.RUNNING


def test_a_migration_moves_the_domain_or_says_it_cannot(env: Env) -> None:
    """The one place the two differ: the fake migrates, libvirt's test driver cannot."""
    spec = env.running()
    dest_uri, dest_state = env.destination()
    moved = dataclasses.replace(spec, console_log=env.tmp_path / "dest.log")
    if env.kind == "fake":
        env.source.migrate_live(spec.uuid, dest_uri, dest=moved)
        assert env.driver.state(spec.uuid) is PowerState.MISSING
        assert dest_state(spec.uuid) is PowerState.RUNNING
        return
    with pytest.raises(DriverError) as caught:
        env.source.migrate_live(spec.uuid, dest_uri, dest=moved)
    assert caught.value.code == MIGRATION_UNSUPPORTED
    assert caught.value.details["source_state"] == "running"
    assert env.driver.state(spec.uuid) is PowerState.RUNNING
    with pytest.raises(DriverError) as direct:
        env.source.migrate_live(
            spec.uuid, dest_uri, options=MigrationOptions(peer_to_peer=False, copy_storage=True)
        )
    assert direct.value.code == MIGRATION_UNSUPPORTED


# -- the fake's extras ------------------------------------------------------------------------


def _fakes(tmp_path: Path) -> tuple[FakeComputeDriver, FakeComputeDriver, DomainSpec]:
    hypervisors = FakeHypervisors()
    a = FakeComputeDriver("a", hypervisors=hypervisors)
    b = FakeComputeDriver("b", hypervisors=hypervisors)
    spec = Env("fake", tmp_path).spec()
    a.define(spec)
    a.start(spec.uuid)
    return a, b, spec


def test_fake_domains_go_back_and_forth_with_their_volumes(tmp_path: Path) -> None:
    a, b, spec = _fakes(tmp_path)
    volume = VolumeAttachment("vol-1", 0, path=tmp_path / "vol-1.raw")
    a.attach_volume(spec.uuid, volume)
    a.migrate_live(spec.uuid, b.uri)
    assert (a.state(spec.uuid), b.state(spec.uuid)) == (PowerState.MISSING, PowerState.RUNNING)
    assert b.attached_volumes(spec.uuid) == (volume,)
    back = dataclasses.replace(spec, volumes=(volume,), console_log=tmp_path / "back.log")
    b.migrate_live(spec.uuid, a.uri, dest=back)
    assert (a.state(spec.uuid), b.state(spec.uuid)) == (PowerState.RUNNING, PowerState.MISSING)
    assert a.attached_volumes(spec.uuid) == (volume,)


def test_fake_destination_can_refuse_and_nothing_moves(tmp_path: Path) -> None:
    a, b, spec = _fakes(tmp_path)
    b.fail_on.add("accept_migration")
    with pytest.raises(DriverError) as caught:
        a.migrate_live(spec.uuid, b.uri)
    assert caught.value.code == MIGRATION_REFUSED
    assert (a.state(spec.uuid), b.state(spec.uuid)) == (PowerState.RUNNING, PowerState.MISSING)


def test_fake_destination_that_left_is_unreachable(tmp_path: Path) -> None:
    a, b, spec = _fakes(tmp_path)
    hypervisors = FakeHypervisors()
    hypervisors.register(a.uri, a)
    lonely = FakeComputeDriver("lonely")  # in no registry: reaches nothing
    lonely.define(spec)
    lonely.start(spec.uuid)
    with pytest.raises(HypervisorUnavailable):
        lonely.migrate_live(spec.uuid, b.uri)


# -- the libvirt driver's destination XML (pure) ----------------------------------------------


def _rich_spec(tmp_path: Path, side: str, port: int) -> DomainSpec:
    base = tmp_path / side
    return DomainSpec(
        uuid="7e0a1c7e-4a59-4a5e-9a34-3a0c1d4f1f00",
        name=f"{DOMAIN_PREFIX}xml",
        vcpus=1,
        memory_mib=128,
        disks=(
            DiskSpec(path=base / "root.qcow2"),
            DiskSpec(path=base / "seed.iso", format="raw", target="vdb", readonly=True),
        ),
        console_log=base / "console.log",
        port_forwards=(PortForward(host_port=port),),
        nics=(NicSpec(mac="52:54:00:aa:bb:cc", bridge=f"br-{side}", target=f"tap-{side}"),),
        volumes=(VolumeAttachment("vol-1", 0, path=base / "vol-1.raw"),),
    )


def test_destination_xml_replaces_only_host_local_parts(tmp_path: Path) -> None:
    source, dest = _rich_spec(tmp_path, "a", 22001), _rich_spec(tmp_path, "b", 22002)
    live = domain_xml(source).replace(
        f'<source file="{tmp_path / "a" / "root.qcow2"}" />',
        f"<source file=\"{tmp_path / 'a' / 'root.qcow2'}\" /><backingStore type='file'>"
        "<format type='qcow2'/><source file='/a/base.qcow2'/></backingStore>",
    )
    assert "backingStore" in live
    rewritten = destination_xml(live, dest)
    assert rewritten.count(str(tmp_path / "b")) == 4  # 3 disks and the serial log
    assert str(tmp_path / "a") not in rewritten
    assert "backingStore" not in rewritten
    assert "hostfwd=tcp:127.0.0.1:22002-:22" in rewritten
    assert "br-b" in rewritten and "tap-b" in rewritten and "br-a" not in rewritten
    assert destination_xml(domain_xml(dest), dest).count("<disk") == 3


def test_destination_xml_refuses_hardware_changes(tmp_path: Path) -> None:
    source = _rich_spec(tmp_path, "a", 22001)
    xml = domain_xml(source)
    fewer_disks = dataclasses.replace(source, disks=source.disks[:1])
    with pytest.raises(InvalidInput, match="no disk vdb"):
        destination_xml(xml, fewer_disks)
    with pytest.raises(InvalidInput, match="NIC"):
        destination_xml(xml, dataclasses.replace(source, nics=()))
    with pytest.raises(InvalidInput, match="user-mode NIC"):
        destination_xml(xml, dataclasses.replace(source, user_network=False))
    with pytest.raises(InvalidInput, match="no disk vdd"):
        destination_xml(xml.replace('dev="vdb"', 'dev="vdd"'), source)
    with pytest.raises(InvalidInput, match="lacks: vdb"):
        destination_xml(xml.replace('dev="vdb"', 'dev="vdd"'), _with_vdd(source))


def _with_vdd(spec: DomainSpec) -> DomainSpec:
    vdd = DiskSpec(path=spec.disks[1].path, format="raw", target="vdd", readonly=True)
    return dataclasses.replace(spec, disks=(*spec.disks, vdd))


def test_copy_storage_copies_writable_file_disks_only(tmp_path: Path) -> None:
    assert writable_file_disks(domain_xml(_rich_spec(tmp_path, "a", 22001))) == ["vda", "vdc"]
