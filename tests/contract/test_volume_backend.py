"""One suite, every volume backend: fake, file on ext4 (qcow2 layers, raw full copies), file on
XFS and btrfs (reflinks), and iSCSI (tgtd, data read and written through QEMU's initiator).

The filesystems are loop devices this module makes and removes (needs root, mkfs.xfs,
mkfs.btrfs); ``tgtd`` is a private daemon on a free loopback port, ended by PID. Data are
read and written with ``qemu-io`` through each export (a file, or the ``iscsi://`` URL), and
with the fake's own ``read``/``write`` for the fake, so "point in time" is checked on the real
data path. Deliberate differences between backends are features, not special cases:

* ``features.live_snapshot``: a snapshot or clone of an exported volume is taken (reflink,
  fake) or refused with Conflict (qcow2 layers, raw full copies).
* free space is the filesystem's (file, iSCSI) or a thick count (fake).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratuslab.drivers.storage import (
    BackendFeatures,
    VolumeBackend,
    VolumeExport,
    VolumeInfo,
    get_volume_backend,
)
from stratuslab.drivers.storage.fake import FakeVolumeBackend
from stratuslab.drivers.storage.file import FileVolumeBackend
from stratuslab.drivers.storage.iscsi import IscsiVolumeBackend
from stratuslab.drivers.storage.tgt import MAX_CONTROL_PORT, SOCKET_DIR, TgtDaemon
from stratuslab.errors import CapacityError, Conflict, InvalidInput, NotFound

MiB = 1 << 20
HOST = "127.0.0.1"
TEST_ROOT = Path("/var/lib/stratuslab-test")


# -- environment: loop filesystems and a private tgtd -------------------------------------


def _have(*tools: str) -> bool:
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in tools)


@contextmanager
def loop_filesystem(fstype: str, mountpoint: Path, size_mib: int = 1024) -> Iterator[Path]:
    """A fresh ``fstype`` filesystem on a loop device mounted at ``mountpoint``."""
    image = mountpoint.with_name(mountpoint.name + ".img")
    with image.open("wb") as f:
        f.truncate(size_mib * MiB)
    mkfs = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"]}
    mkfs["btrfs"] = ["mkfs.btrfs", "-q", "-f"]
    device = ""
    try:
        subprocess.run([*mkfs[fstype], str(image)], check=True, capture_output=True)
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", device, str(mountpoint)], check=True)
        mountpoint.chmod(0o755)
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["umount", str(mountpoint)], check=False)
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        image.unlink(missing_ok=True)
        shutil.rmtree(mountpoint, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_control_port() -> int:
    """A ``tgtd -C`` number no other tgtd on this machine uses."""
    while True:
        port = random.randint(1000, MAX_CONTROL_PORT)
        if not (SOCKET_DIR / f"socket.{port}").exists():
            return port


@contextmanager
def private_tgtd(log: Path) -> Iterator[TgtDaemon]:
    daemon = TgtDaemon(portal_port=free_port(), control_port=free_control_port(), log=log)
    with daemon:
        yield daemon


@pytest.fixture(scope="module")
def storage_root() -> Iterator[Path]:
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    root = TEST_ROOT / f"vcontract-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def filesystems(storage_root: Path) -> Iterator[Callable[[str], Path]]:
    """Mount each filesystem type on first use; all are unmounted at the end of the module."""
    mounted: dict[str, Path] = {}
    stack: list[object] = []

    def get(fstype: str) -> Path:
        tools = {"ext4": "mkfs.ext4", "xfs": "mkfs.xfs", "btrfs": "mkfs.btrfs"}[fstype]
        if not _have(tools, "losetup", "mount"):
            pytest.skip(f"needs root and {tools}")
        if fstype not in mounted:
            context = loop_filesystem(fstype, storage_root / fstype)
            mounted[fstype] = context.__enter__()
            stack.append(context)
        return mounted[fstype]

    yield get
    for context in reversed(stack):
        context.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tgtd(storage_root: Path) -> Iterator[TgtDaemon]:
    if not _have("tgtd", "tgtadm", "qemu-io"):
        pytest.skip("needs root, tgtd/tgtadm (Debian tgt) and qemu-io")
    with private_tgtd(storage_root / "tgtd.log") as daemon:
        yield daemon


# -- one backend under test, with a way to read and write its volumes ----------------------


@dataclass
class Env:
    backend: VolumeBackend
    kind: str

    def write(self, volume_id: str, offset: int, byte: int, length: int = 4096) -> None:
        if isinstance(self.backend, FakeVolumeBackend):
            self.backend.write(volume_id, offset, bytes([byte]) * length)
            return
        with self._exported(volume_id) as export:
            _qemu_io(export, f"write -P {byte} {offset} {length}")

    def holds(self, volume_id: str, offset: int, byte: int, length: int = 4096) -> bool:
        """True if ``length`` bytes at ``offset`` are all ``byte``."""
        if isinstance(self.backend, FakeVolumeBackend):
            return self.backend.read(volume_id, offset, length) == bytes([byte]) * length
        with self._exported(volume_id) as export:
            out = _qemu_io(export, f"read -P {byte} {offset} {length}", readonly=True)
        return "Pattern verification failed" not in out

    @contextmanager
    def _exported(self, volume_id: str) -> Iterator[VolumeExport]:
        was = HOST in self.backend.info(volume_id).exports
        export = self.backend.export(volume_id, HOST)
        try:
            yield export
        finally:
            if not was:
                self.backend.unexport(volume_id, HOST)


def _qemu_io(export: VolumeExport, command: str, *, readonly: bool = False) -> str:
    flags = ["-r"] if readonly or export.readonly else []
    target = export.url if export.network is not None else str(export.path)
    done = subprocess.run(
        ["qemu-io", "-f", export.format, *flags, "-c", command, target],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


BACKENDS = ["fake", "file-ext4-qcow2", "file-ext4-raw", "file-xfs-qcow2", "file-btrfs-raw"]
BACKENDS.append("iscsi-xfs")


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    kind: str = request.param
    backend: VolumeBackend
    if kind == "fake":
        backend = FakeVolumeBackend(capacity_bytes=256 * MiB)
    else:
        if not _have("qemu-img", "qemu-io"):
            pytest.skip("needs root, qemu-img and qemu-io")
        fstype = kind.split("-")[1]
        root = request.getfixturevalue("filesystems")(fstype) / uuid.uuid4().hex[:8]
        if kind.startswith("iscsi"):
            daemon: TgtDaemon = request.getfixturevalue("tgtd")
            backend = IscsiVolumeBackend(
                root, portal_port=daemon.portal_port, control_port=daemon.control_port
            )
        else:
            backend = FileVolumeBackend(root, format=kind.split("-")[2])
    env = Env(backend, kind)
    yield env
    for info in backend.list_volumes():
        for host in info.exports:
            backend.unexport(info.volume_id, host)
        backend.delete(info.volume_id)


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def volume(env: Env) -> VolumeInfo:
    return env.backend.create(new_id(), 8 * MiB)


# -- shape ---------------------------------------------------------------------------------


def test_satisfies_the_protocol(env: Env) -> None:
    assert isinstance(env.backend, VolumeBackend)
    assert env.backend.name == env.kind.split("-")[0]
    assert isinstance(env.backend.features, BackendFeatures)


def test_features_match_the_storage(env: Env) -> None:
    features = env.backend.features
    reflink = env.kind in ("fake", "file-xfs-qcow2", "file-btrfs-raw", "iscsi-xfs")
    assert features.live_snapshot is reflink
    assert features.cow_clone is (reflink or env.kind == "file-ext4-qcow2")
    assert features.shared is (env.kind in ("fake", "iscsi-xfs"))


# -- create --------------------------------------------------------------------------------


def test_create_gives_an_empty_volume(env: Env) -> None:
    volume_id = new_id()
    info = env.backend.create(volume_id, 8 * MiB)
    assert info == VolumeInfo(volume_id, 8 * MiB, info.format)
    assert info.format in ("qcow2", "raw")
    assert env.backend.exists(volume_id)
    assert env.backend.size(volume_id) == 8 * MiB
    assert env.backend.info(volume_id) == info
    assert info in env.backend.list_volumes()
    assert env.holds(volume_id, 0, 0)
    assert env.holds(volume_id, 8 * MiB - 4096, 0)


@pytest.mark.parametrize("size", [0, -512, 511, 1000, True])
def test_create_refuses_bad_sizes(env: Env, size: int) -> None:
    volume_id = new_id()
    with pytest.raises(InvalidInput):
        env.backend.create(volume_id, size)
    assert not env.backend.exists(volume_id)


def test_create_refuses_more_than_the_free_space(env: Env) -> None:
    volume_id = new_id()
    too_big = (env.backend.free_bytes() // 512 + 1024) * 512
    with pytest.raises(CapacityError) as caught:
        env.backend.create(volume_id, too_big)
    assert caught.value.hint
    assert not env.backend.exists(volume_id)
    assert env.backend.list_volumes() == []


def test_create_refuses_a_duplicate_and_keeps_the_original(env: Env, volume: VolumeInfo) -> None:
    env.write(volume.volume_id, 0, 0x41)
    with pytest.raises(Conflict):
        env.backend.create(volume.volume_id, 16 * MiB)
    assert env.backend.size(volume.volume_id) == 8 * MiB
    assert env.holds(volume.volume_id, 0, 0x41)


@pytest.mark.parametrize("bad", ["", "UPPER", "a/b", "../x", "-x", "x" * 65, "a_b"])
def test_malformed_ids_are_invalid(env: Env, bad: str) -> None:
    with pytest.raises(InvalidInput):
        env.backend.create(bad, 8 * MiB)
    with pytest.raises(InvalidInput):
        env.backend.exists(bad)


def test_create_from_an_image(env: Env, tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(b"\x5a" * 8192 + b"\0" * (MiB - 8192))
    info = env.backend.create(new_id(), 4 * MiB, from_image=image)
    assert env.backend.size(info.volume_id) == 4 * MiB
    assert env.holds(info.volume_id, 0, 0x5A, 8192)
    assert env.holds(info.volume_id, 2 * MiB, 0)


def test_create_from_an_image_larger_than_the_volume(env: Env, tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(b"\1" * (2 * MiB))
    volume_id = new_id()
    with pytest.raises(InvalidInput, match="more than"):
        env.backend.create(volume_id, MiB, from_image=image)
    with pytest.raises(NotFound):
        env.backend.create(volume_id, MiB, from_image=tmp_path / "missing.raw")
    assert not env.backend.exists(volume_id)


# -- unknown volumes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda b, v: b.delete(v),
        lambda b, v: b.grow(v, 16 * MiB),
        lambda b, v: b.snapshot(v, new_id()),
        lambda b, v: b.clone(v, new_id()),
        lambda b, v: b.export(v, HOST),
        lambda b, v: b.unexport(v, HOST),
        lambda b, v: b.size(v),
        lambda b, v: b.info(v),
    ],
    ids=["delete", "grow", "snapshot", "clone", "export", "unexport", "size", "info"],
)
def test_unknown_volumes_are_not_found(
    env: Env, call: Callable[[VolumeBackend, str], object]
) -> None:
    with pytest.raises(NotFound):
        call(env.backend, new_id())
    assert env.backend.list_volumes() == []


def test_delete_removes_the_volume(env: Env, volume: VolumeInfo) -> None:
    env.backend.delete(volume.volume_id)
    assert not env.backend.exists(volume.volume_id)
    assert env.backend.list_volumes() == []
    with pytest.raises(NotFound):
        env.backend.delete(volume.volume_id)


# -- grow ----------------------------------------------------------------------------------


def test_grow_keeps_the_data(env: Env, volume: VolumeInfo) -> None:
    env.write(volume.volume_id, 0, 0x42)
    grown = env.backend.grow(volume.volume_id, 16 * MiB)
    assert grown.size_bytes == env.backend.size(volume.volume_id) == 16 * MiB
    assert env.holds(volume.volume_id, 0, 0x42)
    assert env.holds(volume.volume_id, 16 * MiB - 4096, 0)
    assert env.backend.grow(volume.volume_id, 16 * MiB) == grown


def test_grow_refuses_to_shrink_or_overflow(env: Env, volume: VolumeInfo) -> None:
    with pytest.raises(InvalidInput, match="shrinking"):
        env.backend.grow(volume.volume_id, 4 * MiB)
    with pytest.raises(InvalidInput):
        env.backend.grow(volume.volume_id, 0)
    too_big = (env.backend.free_bytes() // 512 + 1024) * 512 + volume.size_bytes
    with pytest.raises(CapacityError):
        env.backend.grow(volume.volume_id, too_big)
    assert env.backend.size(volume.volume_id) == 8 * MiB


# -- snapshots and clones ------------------------------------------------------------------


def test_a_snapshot_does_not_see_later_writes(env: Env, volume: VolumeInfo) -> None:
    src = volume.volume_id
    env.write(src, 0, 0x41)
    snap = env.backend.snapshot(src, new_id())
    assert snap.readonly and snap.parent == src and snap.size_bytes == volume.size_bytes
    env.write(src, 0, 0x42)
    env.write(src, 4 * MiB, 0x43)
    assert env.holds(snap.volume_id, 0, 0x41)
    assert env.holds(snap.volume_id, 4 * MiB, 0)
    assert env.holds(src, 0, 0x42)
    assert env.holds(src, 4 * MiB, 0x43)


def test_a_clone_is_independent_both_ways(env: Env, volume: VolumeInfo) -> None:
    src = volume.volume_id
    env.write(src, 0, 0x41)
    clone = env.backend.clone(src, new_id())
    assert not clone.readonly and clone.parent == src
    env.write(clone.volume_id, 0, 0x51)
    env.write(src, MiB, 0x42)
    assert env.holds(src, 0, 0x41)
    assert env.holds(clone.volume_id, 0, 0x51)
    assert env.holds(clone.volume_id, MiB, 0)


def test_copies_survive_the_deletion_of_their_source(env: Env, volume: VolumeInfo) -> None:
    src = volume.volume_id
    env.write(src, 0, 0x41)
    snap = env.backend.snapshot(src, new_id())
    env.write(src, 0, 0x42)
    clone = env.backend.clone(snap.volume_id, new_id())  # restore from the snapshot
    second = env.backend.snapshot(src, new_id())
    env.backend.delete(src)
    env.backend.delete(snap.volume_id)
    assert env.holds(clone.volume_id, 0, 0x41)
    assert env.holds(second.volume_id, 0, 0x42)
    env.write(clone.volume_id, 0, 0x44)
    assert env.holds(second.volume_id, 0, 0x42)


def test_a_snapshot_is_read_only(env: Env, volume: VolumeInfo) -> None:
    snap = env.backend.snapshot(volume.volume_id, new_id())
    with pytest.raises(Conflict):
        env.backend.grow(snap.volume_id, 16 * MiB)
    export = env.backend.export(snap.volume_id, HOST)
    assert export.readonly
    assert export.attachment(0).readonly
    env.backend.unexport(snap.volume_id, HOST)


def test_copies_refuse_taken_names(env: Env, volume: VolumeInfo) -> None:
    other = env.backend.create(new_id(), 8 * MiB)
    for copy in (env.backend.snapshot, env.backend.clone):
        with pytest.raises(Conflict):
            copy(volume.volume_id, other.volume_id)
        with pytest.raises(Conflict):
            copy(volume.volume_id, volume.volume_id)
    assert not env.backend.info(other.volume_id).readonly


def test_copies_of_an_exported_volume_follow_the_feature(env: Env, volume: VolumeInfo) -> None:
    env.write(volume.volume_id, 0, 0x41)
    env.backend.export(volume.volume_id, HOST)
    dst = new_id()
    if env.backend.features.live_snapshot:
        env.backend.snapshot(volume.volume_id, dst)
        assert env.holds(dst, 0, 0x41)
    else:
        with pytest.raises(Conflict):
            env.backend.snapshot(volume.volume_id, dst)
        assert not env.backend.exists(dst)


def test_copies_need_free_space_or_share_blocks(env: Env) -> None:
    big = env.backend.create(new_id(), (env.backend.free_bytes() // 2 // 512 + 1024) * 512)
    env.write(big.volume_id, 0, 0x41)
    # A thick fake counts the full size; sparse files copy only what is written.
    if env.kind == "fake":
        with pytest.raises(CapacityError):
            env.backend.clone(big.volume_id, new_id())
    else:
        clone = env.backend.clone(big.volume_id, new_id())
        assert env.holds(clone.volume_id, 0, 0x41)


# -- export --------------------------------------------------------------------------------


def test_export_is_idempotent_and_blocks_delete_and_grow(env: Env, volume: VolumeInfo) -> None:
    first = env.backend.export(volume.volume_id, HOST)
    assert env.backend.export(volume.volume_id, HOST) == first
    assert env.backend.info(volume.volume_id).exports == (HOST,)
    assert (first.path is None) != (first.network is None)
    assert first.url.startswith("iscsi://" if env.kind.startswith("iscsi") else "file://")
    attachment = first.attachment(0)
    assert attachment.target == "vdc"
    assert attachment.volume_id == volume.volume_id
    with pytest.raises(Conflict):
        env.backend.delete(volume.volume_id)
    with pytest.raises(Conflict):
        env.backend.grow(volume.volume_id, 16 * MiB)
    env.backend.unexport(volume.volume_id, HOST)
    env.backend.unexport(volume.volume_id, HOST)
    assert env.backend.info(volume.volume_id).exports == ()
    env.backend.delete(volume.volume_id)


def test_export_data_round_trip(env: Env, volume: VolumeInfo) -> None:
    env.write(volume.volume_id, 12288, 0x61)
    assert env.holds(volume.volume_id, 12288, 0x61)
    assert env.holds(volume.volume_id, 0, 0)


# -- registry ------------------------------------------------------------------------------


def test_registry_builds_backends_by_name(tmp_path: Path) -> None:
    fake = get_volume_backend("fake", capacity_bytes=MiB)
    assert isinstance(fake, FakeVolumeBackend)
    assert fake.free_bytes() == MiB
    files = get_volume_backend("file", root=tmp_path / "vols", format="raw")
    assert isinstance(files, FileVolumeBackend)
    iscsi = get_volume_backend("iscsi", root=tmp_path / "iscsi", portal_port=3261)
    assert isinstance(iscsi, IscsiVolumeBackend)
    with pytest.raises(InvalidInput) as caught:
        get_volume_backend("lvm")
    assert "file" in caught.value.hint
    assert "iscsi" in caught.value.hint
