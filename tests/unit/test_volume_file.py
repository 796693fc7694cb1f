"""The file backend's own design: frozen qcow2 layers, crash leftovers, exports, file helpers.

The contract suite checks behaviour on real filesystems; these tests pin the layout that makes
the behaviour true (``reflink=False`` forces the layer and copy paths on any filesystem).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stratuslab.drivers.storage import files
from stratuslab.drivers.storage.file import FileVolumeBackend
from stratuslab.errors import Conflict, DriverError, ImageError, InvalidInput

MiB = 1 << 20

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


@pytest.fixture
def qcow2(tmp_path: Path) -> FileVolumeBackend:
    return FileVolumeBackend(tmp_path / "store", format="qcow2", reflink=False, hostname="node1")


def backing_chain(path: Path) -> list[str]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "--backing-chain", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [Path(image["filename"]).name for image in json.loads(out)]


def test_layout_and_record(qcow2: FileVolumeBackend) -> None:
    info = qcow2.create("vol-1", 4 * MiB)
    data = qcow2.root / "volumes" / "vol-1.qcow2"
    assert qcow2.data_path("vol-1") == data
    record = json.loads((qcow2.root / "volumes" / "vol-1.json").read_text())
    assert record["schema_version"] == 1
    assert record["size_bytes"] == info.size_bytes == 4 * MiB
    assert oct(qcow2.root.stat().st_mode & 0o777) == "0o755"
    assert list((qcow2.root / "tmp").iterdir()) == []


def test_snapshot_freezes_the_source_into_a_read_only_layer(qcow2: FileVolumeBackend) -> None:
    qcow2.create("src", 4 * MiB)
    qcow2.snapshot("src", "snap")
    [layer] = qcow2.layers()
    assert layer.stat().st_mode & 0o777 == 0o444
    assert backing_chain(qcow2.data_path("src")) == ["src.qcow2", layer.name]
    assert backing_chain(qcow2.data_path("snap")) == ["snap.qcow2", layer.name]
    assert qcow2.data_path("snap").stat().st_mode & 0o777 == 0o444
    assert qcow2.data_path("src").stat().st_mode & 0o777 == 0o644
    # relative, so the store can be mounted anywhere
    assert files.qcow2_backing(qcow2.data_path("src")) == qcow2.data_path("src").parent / (
        "../layers/" + layer.name
    )


def test_layers_go_when_nothing_stands_on_them(qcow2: FileVolumeBackend) -> None:
    qcow2.create("src", 4 * MiB)
    qcow2.snapshot("src", "s1")
    qcow2.clone("s1", "c1")  # c1 stands on a layer that stands on the first one
    assert len(qcow2.layers()) == 2
    qcow2.delete("src")
    qcow2.delete("s1")
    assert len(qcow2.layers()) == 2  # c1 still needs both
    assert len(backing_chain(qcow2.data_path("c1"))) == 3
    qcow2.delete("c1")
    assert qcow2.layers() == []
    assert sorted(p.name for p in (qcow2.root / "volumes").iterdir()) == []


def test_an_orphan_layer_from_a_crash_is_collected(qcow2: FileVolumeBackend) -> None:
    qcow2.create("a", MiB)
    qcow2.create("b", MiB)
    os.link(qcow2.data_path("a"), qcow2.root / "layers" / "deadbeef.qcow2")  # crash here
    qcow2.delete("b")
    assert qcow2.layers() == []
    assert qcow2.exists("a")


def test_a_data_file_without_record_is_no_volume(qcow2: FileVolumeBackend) -> None:
    (qcow2.root / "volumes" / "ghost.qcow2").write_bytes(b"half-made")
    assert not qcow2.exists("ghost")
    qcow2.create("ghost", MiB)  # replaces the leftover
    assert qcow2.size("ghost") == MiB


def test_a_failed_create_leaves_nothing(qcow2: FileVolumeBackend, tmp_path: Path) -> None:
    image = tmp_path / "broken.qcow2"  # its backing file is missing
    args = ["-u", "-b", "/nonexistent.qcow2", "-F", "qcow2", str(image), "1M"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args], check=True)
    with pytest.raises(ImageError):
        qcow2.create("vol", MiB, from_image=image)
    assert not qcow2.exists("vol")
    assert list((qcow2.root / "volumes").iterdir()) == []
    assert list((qcow2.root / "tmp").iterdir()) == []


def test_snapshot_of_an_exported_qcow2_volume_is_refused(qcow2: FileVolumeBackend) -> None:
    qcow2.create("src", MiB)
    qcow2.export("src", "node1")
    with pytest.raises(Conflict, match="atomically"):
        qcow2.snapshot("src", "snap")
    assert qcow2.layers() == []
    assert not qcow2.exists("snap")


def test_raw_copies_are_sparse_full_copies(tmp_path: Path) -> None:
    raw = FileVolumeBackend(tmp_path / "raw", format="raw", reflink=False)
    raw.create("src", 64 * MiB)
    with raw.data_path("src").open("r+b") as f:
        f.seek(32 * MiB)
        f.write(b"x" * 4096)
    raw.clone("src", "dst")
    dst = raw.data_path("dst")
    assert dst.stat().st_size == 64 * MiB
    assert files.allocated_bytes(dst) < MiB
    assert dst.read_bytes()[32 * MiB : 32 * MiB + 4096] == b"x" * 4096
    assert raw.features.cow_clone is False
    assert raw.layers() == []


def test_local_stores_export_only_to_this_host(qcow2: FileVolumeBackend, tmp_path: Path) -> None:
    qcow2.create("vol", MiB)
    for host in ("node1", "localhost", "127.0.0.1"):
        assert qcow2.export("vol", host).path == qcow2.data_path("vol")
    with pytest.raises(InvalidInput, match="local to node1"):
        qcow2.export("vol", "node2")
    shared = FileVolumeBackend(tmp_path / "shared", shared=True, reflink=False)
    shared.create("vol", MiB)
    assert shared.export("vol", "node2").host == "node2"
    assert shared.features.shared


def test_unknown_format_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="vmdk"):
        FileVolumeBackend(tmp_path, format="vmdk")


def test_reflink_probe_on_this_filesystem_does_not_leave_files(tmp_path: Path) -> None:
    files.reflink_works(tmp_path)  # either answer is fine; ext4 says no, XFS/btrfs yes
    assert list(tmp_path.iterdir()) == []


def test_sparse_copy_keeps_holes_and_data(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with src.open("wb") as f:
        f.truncate(16 * MiB)
        f.seek(MiB)
        f.write(b"a" * 100)
        f.seek(15 * MiB)
        f.write(b"b" * 100)
    files.sparse_copy(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert files.allocated_bytes(tmp_path / "dst") <= files.allocated_bytes(src)


def test_qcow2_backing_of_other_files_is_none(tmp_path: Path) -> None:
    (tmp_path / "raw").write_bytes(b"\0" * 64)
    (tmp_path / "short").write_bytes(b"QFI")
    assert files.qcow2_backing(tmp_path / "raw") is None
    assert files.qcow2_backing(tmp_path / "short") is None


def test_run_reports_missing_tools_and_failures() -> None:
    with pytest.raises(DriverError, match="not installed"):
        files.run(["/nonexistent/tool"], what="do nothing")
    with pytest.raises(DriverError, match="exited with 1"):
        files.run(["false"], what="fail")
