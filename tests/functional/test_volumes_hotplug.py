"""Volumes in real guests: the tiny appliance on ``qemu:///system`` (TCG) with file and iSCSI
volumes attached at define time and hot-plugged, read and written over SSH.

Guests find a volume by its serial (the first 20 characters of the volume id) in
``/sys/block/vd*/serial``, never by its name. Domains are ``stratus-vtest-<random>`` and are
undefined however a test ends; at most one guest runs at a time. Files live under
/var/lib/stratuslab-test (0755) so QEMU, running as libvirt-qemu, can reach them; ``tgtd`` is
a private daemon ended by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratuslab.appliances.tiny import READY_MARKER, build_tiny
from stratuslab.context import build_nocloud, write_seed_iso
from stratuslab.drivers.base import (
    VOLUME_SERIAL_CHARS,
    DiskSpec,
    DomainSpec,
    HotplugDriver,
    PortForward,
    VolumeAttachment,
)
from stratuslab.drivers.libvirt import LibvirtComputeDriver
from stratuslab.drivers.storage.file import FileVolumeBackend
from stratuslab.drivers.storage.iscsi import IscsiVolumeBackend
from stratuslab.errors import Conflict, HypervisorUnavailable
from stratuslab.types import Hypervisor
from tests.contract.test_volume_backend import free_port, private_tgtd

pytestmark = pytest.mark.functional

TEST_ROOT = Path("/var/lib/stratuslab-test")
CACHE = Path(os.environ.get("STRATUS_TEST_CACHE", "/var/cache/stratuslab-test")) / "tiny"
TOOLS = ("qemu-img", "ssh", "ssh-keygen", "apt-get", "extlinux")
BOOT_TIMEOUT = 180.0
HOST = "127.0.0.1"
MiB = 1 << 20


# -- a tiny guest on libvirt ---------------------------------------------------------------


@dataclass
class Guest:
    driver: LibvirtComputeDriver
    spec: DomainSpec
    key: Path

    @property
    def uuid(self) -> str:
        return self.spec.uuid

    def ssh_args(self, command: str) -> list[str]:
        return [
            "ssh", "-i", str(self.key), "-p", str(self.spec.port_forwards[0].host_port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", command,
        ]  # fmt: skip

    def ssh(self, command: str) -> str:
        done = subprocess.run(
            self.ssh_args(command), capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"ssh {command!r}: {done.stderr}\n{self.console()[-2000:]}"
        return done.stdout.strip()

    def console(self) -> str:
        try:
            return self.spec.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def device(self, volume_id: str) -> str | None:
        """The guest's block device (``/dev/vdX``) whose serial is the volume's."""
        found = self.ssh(find_device_script(volume_id))
        return f"/dev/{found}" if found else None

    def wait_device(self, volume_id: str, *, present: bool = True, timeout: float = 60) -> str:
        """Poll inside the guest until the volume's device appears (or goes)."""
        script = (
            f"i=0; while [ $i -lt {int(timeout * 20)} ]; do "
            f"d=$({find_device_script(volume_id)}); "
            f'if {"[ -n" if present else "[ -z"} "$d" ]; then echo "ok $d"; exit 0; fi; '
            "usleep 50000; i=$((i+1)); done; echo timeout"
        )
        out = self.ssh(script)
        assert out.startswith("ok"), f"volume {volume_id} present={present}: {out}"
        return f"/dev/{out[3:]}" if present else ""

    def write_marker(self, device: str, marker: str) -> None:
        self.ssh(f"printf '%s' '{marker}' | dd of={device} bs=512 conv=notrunc,fsync 2>/dev/null")

    def read_marker(self, device: str, length: int) -> str:
        return self.ssh(f"dd if={device} bs=512 count=1 2>/dev/null | head -c {length}")


def find_device_script(volume_id: str) -> str:
    serial = volume_id[:VOLUME_SERIAL_CHARS]
    return (
        "for d in /sys/block/vd*; do "
        f'[ "$(cat $d/serial 2>/dev/null)" = "{serial}" ] && echo ${{d##*/}}; '
        "done; true"
    )


@pytest.fixture(scope="module")
def system() -> Iterator[LibvirtComputeDriver]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    driver = LibvirtComputeDriver("qemu:///system", hypervisor=Hypervisor.QEMU)
    try:
        driver.capabilities()
    except HypervisorUnavailable as exc:
        pytest.skip(f"qemu:///system unavailable: {exc}")
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def tiny_image() -> Iterator[Path]:
    """The tiny appliance where QEMU (user libvirt-qemu) can read it."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(TOOLS)}")
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    home = TEST_ROOT / f"vimage-{uuidlib.uuid4().hex[:8]}"
    home.mkdir(mode=0o755)
    try:
        yield build_tiny(home / "tiny.qcow2", cache_dir=CACHE)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def workdir() -> Iterator[Path]:
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"vtest-{uuidlib.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def tiny_guest(
    driver: LibvirtComputeDriver,
    image: Path,
    key: Path,
    work: Path,
    *,
    volumes: tuple[VolumeAttachment, ...] = (),
) -> Iterator[Guest]:
    """A running tiny appliance (READY on its console) with ``volumes``; removed at the end."""
    uuid = str(uuidlib.uuid4())
    home = work / uuid[:8]
    home.mkdir(mode=0o755)
    root = home / "root.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(root)],
        check=True,
    )
    seed = home / "seed.iso"
    files = build_nocloud(
        instance_id=f"i-{uuid[:8]}",
        hostname=f"vtest-{uuid[:8]}",
        ssh_keys=[key.with_suffix(".pub").read_text()],
    )
    write_seed_iso(files, seed)
    spec = DomainSpec(
        uuid=uuid,
        name=f"stratus-vtest-{uuid[:8]}",
        vcpus=1,
        memory_mib=160,
        disks=(
            DiskSpec(path=root, target="vda", boot_order=1),
            DiskSpec(path=seed, format="raw", target="vdb", readonly=True),
        ),
        console_log=home / "console.log",
        port_forwards=(PortForward(host_port=free_port()),),
        tcg_tb_size_mib=64,
        volumes=volumes,
    )
    guest = Guest(driver, spec, key)
    try:
        driver.define(spec)
        driver.start(uuid)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while READY_MARKER not in guest.console():
            assert time.monotonic() < deadline, f"no READY line:\n{guest.console()[-3000:]}"
            time.sleep(0.2)
        yield guest
    finally:
        driver.undefine(uuid)


# -- tests ---------------------------------------------------------------------------------


def test_file_volume_moves_between_instances_and_snapshots_are_point_in_time(
    system: LibvirtComputeDriver, tiny_image: Path, ssh_key: Path, workdir: Path
) -> None:
    backend = FileVolumeBackend(workdir / "volumes", format="qcow2")
    vol = backend.create(str(uuidlib.uuid4()), 64 * MiB).volume_id
    assert isinstance(system, HotplugDriver)

    # Instance A: hot-plug, write a marker, hot-unplug.
    with tiny_guest(system, tiny_image, ssh_key, workdir) as guest:
        attachment = backend.export(vol, HOST).attachment(0)
        system.attach_volume(guest.uuid, attachment)
        assert system.attached_volumes(guest.uuid) == (attachment,)
        device = guest.wait_device(vol)
        guest.write_marker(device, "MARKER-ONE")
        assert guest.read_marker(device, 10) == "MARKER-ONE"
        system.detach_volume(guest.uuid, attachment)
        guest.wait_device(vol, present=False)
        assert system.attached_volumes(guest.uuid) == ()
    backend.unexport(vol, HOST)

    snap = backend.snapshot(vol, str(uuidlib.uuid4())).volume_id

    # Instance B: the volume (hot-plugged) has the marker; a write after the snapshot is not
    # in the snapshot (attached read-only and shareable).
    with tiny_guest(system, tiny_image, ssh_key, workdir) as guest:
        attachment = backend.export(vol, HOST).attachment(0)
        snap_attachment = backend.export(snap, HOST).attachment(1, shareable=True)
        assert snap_attachment.readonly
        system.attach_volume(guest.uuid, attachment)
        system.attach_volume(guest.uuid, snap_attachment)
        device, snap_device = guest.wait_device(vol), guest.wait_device(snap)
        assert guest.read_marker(device, 10) == "MARKER-ONE"
        guest.write_marker(device, "MARKER-TWO")
        assert guest.read_marker(device, 10) == "MARKER-TWO"
        assert guest.read_marker(snap_device, 10) == "MARKER-ONE"
        assert guest.ssh(f"cat /sys/block/{snap_device[5:]}/ro") == "1"
        system.detach_volume(guest.uuid, snap_attachment)
        system.detach_volume(guest.uuid, attachment)
    for volume_id in (vol, snap):
        backend.unexport(volume_id, HOST)
    clone = backend.clone(snap, str(uuidlib.uuid4()))
    assert _qemu_io_reads(backend.data_path(clone.volume_id), b"MARKER-ONE", "qcow2")
    assert _qemu_io_reads(backend.data_path(vol), b"MARKER-TWO", "qcow2")


def test_iscsi_volume_through_qemus_initiator(
    system: LibvirtComputeDriver, tiny_image: Path, ssh_key: Path, workdir: Path
) -> None:
    files = FileVolumeBackend(workdir / "volumes", format="raw")
    boot_vol = files.create(str(uuidlib.uuid4()), 16 * MiB).volume_id
    with private_tgtd(workdir / "tgtd.log") as tgtd:
        iscsi = IscsiVolumeBackend(
            workdir / "iscsi", portal_port=tgtd.portal_port, control_port=tgtd.control_port
        )
        vol = iscsi.create(str(uuidlib.uuid4()), 32 * MiB).volume_id
        at_boot = files.export(boot_vol, HOST).attachment(0)
        with tiny_guest(system, tiny_image, ssh_key, workdir, volumes=(at_boot,)) as guest:
            assert guest.device(boot_vol) is not None  # attached at define time
            export = iscsi.export(vol, HOST)
            assert export.url.startswith(f"iscsi://127.0.0.1:{tgtd.portal_port}/")
            attachment = export.attachment(1)
            system.attach_volume(guest.uuid, attachment)
            assert system.attached_volumes(guest.uuid) == (at_boot, attachment)
            device = guest.wait_device(vol)
            guest.write_marker(device, "ISCSI-MARKER")
            assert guest.read_marker(device, 12) == "ISCSI-MARKER"
            with pytest.raises(Conflict):
                iscsi.unexport(vol, HOST)  # QEMU is still logged in
            system.detach_volume(guest.uuid, attachment)
            guest.wait_device(vol, present=False)
            iscsi.unexport(vol, HOST)
            assert iscsi.tgtadm.targets() == {}
        data = iscsi.files.data_path(vol).read_bytes()[:12]
        assert data == b"ISCSI-MARKER"


def test_libvirt_hotplug_on_a_defined_domain(system: LibvirtComputeDriver, workdir: Path) -> None:
    """Attach/detach on a shut-off domain change only its definition (no guest needed)."""
    root = workdir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root), "16M"], check=True)
    uuid = str(uuidlib.uuid4())
    spec = DomainSpec(
        uuid=uuid,
        name=f"stratus-vtest-{uuid[:8]}",
        vcpus=1,
        memory_mib=64,
        disks=(DiskSpec(path=root, target="vda"),),
        console_log=workdir / "console.log",
    )
    backend = FileVolumeBackend(workdir / "volumes")
    one = backend.export(backend.create(str(uuidlib.uuid4()), MiB).volume_id, HOST)
    two = backend.export(backend.create(str(uuidlib.uuid4()), MiB).volume_id, HOST)
    try:
        system.define(spec)
        system.attach_volume(uuid, one.attachment(0))
        system.attach_volume(uuid, one.attachment(0))  # idempotent
        system.attach_volume(uuid, two.attachment(3, readonly=True, shareable=True))
        assert system.attached_volumes(uuid) == (
            one.attachment(0),
            two.attachment(3, readonly=True, shareable=True),
        )
        with pytest.raises(Conflict, match="already holds"):
            system.attach_volume(uuid, two.attachment(0))
        with pytest.raises(Conflict, match="already attached"):
            system.attach_volume(uuid, one.attachment(1))
        system.detach_volume(uuid, one.attachment(0))
        system.detach_volume(uuid, one.attachment(0))  # idempotent
        assert [a.index for a in system.attached_volumes(uuid)] == [3]
        # survives a new driver (an agent restart)
        fresh = LibvirtComputeDriver("qemu:///system", hypervisor=Hypervisor.QEMU)
        assert [a.volume_id for a in fresh.attached_volumes(uuid)] == [two.volume_id]
        fresh.close()
    finally:
        system.undefine(uuid)


def test_boot_disks_cannot_be_detached(system: LibvirtComputeDriver, workdir: Path) -> None:
    root = workdir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root), "16M"], check=True)
    uuid = str(uuidlib.uuid4())
    spec = DomainSpec(
        uuid=uuid,
        name=f"stratus-vtest-{uuid[:8]}",
        vcpus=1,
        memory_mib=64,
        disks=(DiskSpec(path=root, target="vda"), DiskSpec(path=root, target="vdc")),
        console_log=workdir / "console.log",
    )
    volume = VolumeAttachment(str(uuidlib.uuid4()), 0, "qcow2", path=root)
    try:
        system.define(spec)
        with pytest.raises(Conflict, match="boot disk"):
            system.detach_volume(uuid, volume)
        with pytest.raises(Conflict, match="boot disk"):
            system.attach_volume(uuid, volume)
    finally:
        system.undefine(uuid)


def _qemu_io_reads(path: Path, data: bytes, fmt: str) -> bool:
    """True if the image at ``path`` starts with ``data`` (read by QEMU, backing chain and all)."""
    out = subprocess.run(
        ["qemu-io", "-r", "-f", fmt, "-c", f"read -v 0 {len(data)}", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [
        line.split(":", 1)[1].strip().split("  ")[0] for line in out.splitlines() if ":  " in line
    ]
    return bytes(int(b, 16) for row in rows for b in row.split()) == data
