"""The node's instance workspace: overlays, seeds, and which cached bases are in use."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratuslab.agent.workspace import LocalWorkspace
from stratuslab.context.iso import read_seed_iso
from stratuslab.schemas.agent import DesiredInstance, ImageRef


def desired(iid: str) -> DesiredInstance:
    return DesiredInstance(
        id=iid, name="vm", hostname="vm", generation=1, desired="running", vcpus=1,
        memory_mib=256, image=ImageRef(id="i", sha256="0" * 64, format="qcow2", size_bytes=1),
        ssh_port=None, ssh_keys=[], user_data=None, reboot_seq=0, reboot_hard=False,
        stop_timeout=5.0, context={"ROLE": "worker"},
    )  # fmt: skip


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Like pytest's, but below a directory QEMU's user may traverse (pytest's is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="stratus-ws-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_prepare_records_the_base_and_remove_releases_it(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    ws = LocalWorkspace(tmp_path / "node")
    disks = ws.prepare(desired("a"), base)
    ws.prepare(desired("b"), base)
    assert [d.target for d in disks][:2] == ["vda", "vdb"]
    info = subprocess.run(["qemu-img", "info", str(disks[0].path)], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert str(base) in info
    seed = read_seed_iso(disks[1].path)
    assert b"instance-id: a" in seed["meta-data"]
    assert ws.bases_in_use() == {base}
    ws.remove("a")
    ws.remove("b")
    assert ws.bases_in_use() == set()
