"""The hot-plug capability: attachment values, domain XML for volumes, the fake driver.

The libvirt side of the same behaviour runs against ``qemu:///system`` in
``tests/functional/test_volumes_hotplug.py`` (libvirt's test driver has no device hot-plug).
"""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stratuslab.drivers.base import (
    ComputeDriver,
    DiskSpec,
    DomainSpec,
    HotplugDriver,
    NetworkSource,
    VolumeAttachment,
    volume_target,
)
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.drivers.libvirt import LibvirtComputeDriver
from stratuslab.drivers.libvirt.domain_xml import domain_xml
from stratuslab.drivers.libvirt.hotplug import parse_disks
from stratuslab.drivers.storage.base import VolumeExport
from stratuslab.errors import Conflict, DriverError, InvalidInput
from stratuslab.types import PowerState

VOL = "0b7e5a52-6d1f-4c3a-9a51-3f0e2d7c8b91"
ISCSI = NetworkSource("iscsi", f"iqn.2011-01.eu.stratuslab:{VOL}/1", "127.0.0.1", 3261)


def spec(*volumes: VolumeAttachment, disks: tuple[DiskSpec, ...] | None = None) -> DomainSpec:
    uuid = str(uuidlib.uuid4())
    return DomainSpec(
        uuid=uuid,
        name=f"stratus-hp-{uuid[:8]}",
        vcpus=1,
        memory_mib=128,
        disks=disks
        or (
            DiskSpec(path=Path("/i/root.qcow2"), target="vda"),
            DiskSpec(path=Path("/i/seed.iso"), format="raw", target="vdb", readonly=True),
        ),
        console_log=Path("/i/console.log"),
        volumes=volumes,
    )


def file_volume(index: int = 0, volume_id: str = VOL, **changes: object) -> VolumeAttachment:
    fields: dict[str, object] = {"format": "qcow2", "path": Path(f"/v/{volume_id}.qcow2")}
    fields.update(changes)
    return VolumeAttachment(volume_id, index, **fields)  # type: ignore[arg-type]


# -- attachment values ---------------------------------------------------------------------


def test_targets_follow_the_index_and_skip_boot_disks() -> None:
    assert [volume_target(i) for i in (0, 1, 23)] == ["vdc", "vdd", "vdz"]
    for bad in (-1, 24):
        with pytest.raises(InvalidInput):
            volume_target(bad)


def test_attachments_need_one_source_and_sharing_needs_read_only() -> None:
    with pytest.raises(InvalidInput, match="exactly one"):
        VolumeAttachment(VOL, 0)
    with pytest.raises(InvalidInput, match="exactly one"):
        VolumeAttachment(VOL, 0, path=Path("/v"), network=ISCSI)
    with pytest.raises(InvalidInput, match="read-only"):
        VolumeAttachment(VOL, 0, path=Path("/v"), shareable=True)
    shared = VolumeAttachment(VOL, 0, path=Path("/v"), readonly=True, shareable=True)
    assert shared.disk_spec().shareable


def test_an_export_becomes_an_attachment() -> None:
    export = VolumeExport(VOL, "node1", "raw", readonly=True, network=ISCSI)
    attachment = export.attachment(2)
    assert attachment == VolumeAttachment(VOL, 2, "raw", network=ISCSI, readonly=True)
    assert export.url == f"iscsi://127.0.0.1:3261/iqn.2011-01.eu.stratuslab:{VOL}/1"


# -- domain XML ----------------------------------------------------------------------------


def test_volume_disks_in_domain_xml() -> None:
    iscsi = VolumeAttachment(VOL, 1, "raw", network=ISCSI, readonly=True, shareable=True)
    xml = domain_xml(spec(file_volume(0, "a" * 36), iscsi))
    disks = ET.fromstring(xml).findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "vdc", "vdd"]  # type: ignore[union-attr]
    net = disks[3]
    assert net.get("type") == "network"
    source = net.find("source")
    assert source is not None
    assert (source.get("protocol"), source.get("name")) == ("iscsi", ISCSI.name)
    assert source.find("host").attrib == {"name": "127.0.0.1", "port": "3261"}  # type: ignore[union-attr]
    assert net.find("readonly") is not None
    assert net.find("shareable") is not None
    assert net.findtext("serial") == VOL[:20]
    assert net.find("alias").get("name") == f"ua-vol-{VOL}"  # type: ignore[union-attr]
    assert disks[2].find("boot") is None
    assert disks[0].find("serial") is None  # instance disks carry no serial


def test_parse_disks_reads_volumes_back() -> None:
    iscsi = VolumeAttachment("b" * 36, 1, "raw", network=ISCSI, readonly=True, shareable=True)
    volumes = (file_volume(0), iscsi)
    disks = parse_disks(domain_xml(spec(*volumes)))
    assert disks["vda"].attachment is None
    assert disks["vdb"].attachment is None
    assert (disks["vdc"].attachment, disks["vdd"].attachment) == volumes


def test_clashing_targets_are_refused() -> None:
    third = DiskSpec(path=Path("/i/volatile.raw"), format="raw", target="vdc")
    with pytest.raises(InvalidInput, match="vdc"):
        domain_xml(spec(file_volume(0), disks=(DiskSpec(path=Path("/r")), third)))


def test_libvirt_driver_offers_hotplug() -> None:
    assert isinstance(LibvirtComputeDriver("test:///default"), HotplugDriver)


# -- the fake driver's hot-plug ------------------------------------------------------------


@pytest.fixture
def fake() -> FakeComputeDriver:
    return FakeComputeDriver()


def defined(driver: ComputeDriver, *volumes: VolumeAttachment) -> DomainSpec:
    domain = spec(*volumes)
    driver.define(domain)
    return domain


def test_fake_offers_hotplug(fake: FakeComputeDriver) -> None:
    assert isinstance(fake, HotplugDriver)


def test_attach_to_a_running_domain_is_live_and_persistent(fake: FakeComputeDriver) -> None:
    domain = defined(fake)
    fake.start(domain.uuid)
    fake.attach_volume(domain.uuid, file_volume(0))
    fake.attach_volume(domain.uuid, file_volume(0))  # idempotent
    assert fake.attached_volumes(domain.uuid) == (file_volume(0),)
    fake.destroy(domain.uuid)
    assert fake.attached_volumes(domain.uuid) == (file_volume(0),)
    fake.start(domain.uuid)
    assert fake.attached_volumes(domain.uuid) == (file_volume(0),)


def test_define_time_volumes_and_detach_while_stopped(fake: FakeComputeDriver) -> None:
    domain = defined(fake, file_volume(1, "c" * 36))
    assert [a.target for a in fake.attached_volumes(domain.uuid)] == ["vdd"]
    fake.detach_volume(domain.uuid, file_volume(1, "c" * 36))
    fake.detach_volume(domain.uuid, file_volume(1, "c" * 36))  # idempotent
    assert fake.attached_volumes(domain.uuid) == ()


def test_redefining_a_running_domain_keeps_live_volumes(fake: FakeComputeDriver) -> None:
    domain = defined(fake)
    fake.start(domain.uuid)
    fake.attach_volume(domain.uuid, file_volume(0))
    fake.define(domain)  # the definition without the volume
    assert fake.attached_volumes(domain.uuid) == (file_volume(0),)
    fake.destroy(domain.uuid)
    assert fake.attached_volumes(domain.uuid) == ()


def test_attach_conflicts(fake: FakeComputeDriver) -> None:
    domain = defined(fake, file_volume(0))
    with pytest.raises(Conflict, match="already holds volume"):
        fake.attach_volume(domain.uuid, file_volume(0, "d" * 36))
    with pytest.raises(Conflict, match="already attached"):
        fake.attach_volume(domain.uuid, file_volume(1))
    with pytest.raises(DriverError, match="no domain"):
        fake.attach_volume(str(uuidlib.uuid4()), file_volume(0))


def test_boot_disks_cannot_be_attached_over_or_detached(fake: FakeComputeDriver) -> None:
    third = DiskSpec(path=Path("/i/volatile.raw"), format="raw", target="vdc")
    domain = spec(disks=(DiskSpec(path=Path("/r")), third))
    fake.define(domain)
    with pytest.raises(Conflict, match="boot disk"):
        fake.attach_volume(domain.uuid, file_volume(0))
    with pytest.raises(Conflict, match="boot disk"):
        fake.detach_volume(domain.uuid, file_volume(0))


def test_detach_needs_the_same_volume(fake: FakeComputeDriver) -> None:
    domain = defined(fake, file_volume(0))
    with pytest.raises(Conflict, match="not volume"):
        fake.detach_volume(domain.uuid, file_volume(0, "e" * 36))
    assert fake.attached_volumes(domain.uuid) == (file_volume(0),)


def test_a_guest_without_hotplug_keeps_the_disk(fake: FakeComputeDriver) -> None:
    fake.guest_releases_disks = False
    domain = defined(fake, file_volume(0))
    fake.start(domain.uuid)
    with pytest.raises(DriverError, match="did not release"):
        fake.detach_volume(domain.uuid, file_volume(0), timeout=1)
    assert fake.attached_volumes(domain.uuid) == (file_volume(0),)
    fake.destroy(domain.uuid)
    fake.detach_volume(domain.uuid, file_volume(0))
    assert fake.state(domain.uuid) is PowerState.SHUTOFF
    assert fake.attached_volumes(domain.uuid) == ()


def test_fake_injects_hotplug_failures(fake: FakeComputeDriver) -> None:
    domain = defined(fake)
    fake.fail_on.add("attach_volume")
    with pytest.raises(DriverError, match="injected"):
        fake.attach_volume(domain.uuid, file_volume(0))
    assert fake.attached_volumes(domain.uuid) == ()


# -- a volume of another host's pool, opened at the URL that host reported -------------------


def test_remote_attachment_from_an_iscsi_url() -> None:
    from stratuslab.agent.volumes import remote_attachment
    from stratuslab.schemas.agent import DesiredAttachment

    want = DesiredAttachment(
        volume_id=VOL, index=2, remote=True, url=f"iscsi://10.0.0.7:3261/{ISCSI.name}"
    )
    att = remote_attachment(want)
    assert att.network == NetworkSource("iscsi", ISCSI.name, "10.0.0.7", 3261)
    assert (att.path, att.target, att.format, att.readonly) == (None, "vde", "raw", False)
    default_port = DesiredAttachment(
        volume_id=VOL, index=0, remote=True, url=f"iscsi://storage-a/{ISCSI.name}"
    )
    network = remote_attachment(default_port).network
    assert network is not None and (network.host, network.port) == ("storage-a", 3260)


def test_remote_attachment_from_a_shared_mount_and_bad_urls() -> None:
    from stratuslab.agent.volumes import remote_attachment
    from stratuslab.schemas.agent import DesiredAttachment

    shared = DesiredAttachment(
        volume_id=VOL, index=0, readonly=True, shareable=True, format="qcow2", remote=True,
        url=f"file:///srv/shared/volumes/{VOL}.qcow2",
    )  # fmt: skip
    att = remote_attachment(shared)
    assert att.path == Path(f"/srv/shared/volumes/{VOL}.qcow2") and att.network is None
    assert (att.format, att.readonly, att.shareable) == ("qcow2", True, True)
    for url in ("nbd://host/x", "iscsi:///no-host", "iscsi://host", "file://"):
        with pytest.raises(InvalidInput):
            remote_attachment(DesiredAttachment(volume_id=VOL, index=0, remote=True, url=url))
