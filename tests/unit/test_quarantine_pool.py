"""The node's volume pool (agent/volumes.py) on the fake backend: what it makes, what it
wipes, and that it never deletes what it was not told to, nor retries a failure."""

from __future__ import annotations

from pathlib import Path

from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.volumes import StoragePool
from stratuslab.drivers.storage.fake import FakeVolumeBackend
from stratuslab.schemas.agent import DesiredVolume

MiB = 1 << 20


def pool(backend: FakeVolumeBackend, tmp_path: Path) -> StoragePool:
    return StoragePool(backend, "127.0.0.1", FakeImageCache(), lambda iid: tmp_path / iid)


def test_makes_grows_and_copies(tmp_path: Path) -> None:
    backend = FakeVolumeBackend()
    p = pool(backend, tmp_path)
    seen = p.converge([DesiredVolume(id="a", size_bytes=MiB, generation=1)])
    assert seen[0].exists and seen[0].size_bytes == MiB and not seen[0].error
    backend.write("a", 0, b"data")
    seen = p.converge(
        [
            DesiredVolume(id="a", size_bytes=2 * MiB, generation=2),
            DesiredVolume(id="s", size_bytes=2 * MiB, generation=1, snapshot_of="a", readonly=True),
            DesiredVolume(id="c", size_bytes=2 * MiB, generation=1, clone_of="a"),
        ]
    )
    assert [o.size_bytes for o in seen] == [2 * MiB] * 3
    assert backend.info("s").readonly and backend.read("c", 0, 4) == b"data"


def test_wipes_only_what_is_desired_absent(tmp_path: Path) -> None:
    backend = FakeVolumeBackend()
    p = pool(backend, tmp_path)
    p.converge([DesiredVolume(id=v, size_bytes=MiB, generation=1) for v in ("keep", "gone")])
    backend.export("gone", "127.0.0.1")  # left exported by a crash
    seen = p.converge([DesiredVolume(id="gone", size_bytes=MiB, generation=2, present=False)])
    assert not seen[0].exists
    assert backend.exists("keep")  # absent from the list is not "delete"


def test_a_failure_is_reported_once_per_generation(tmp_path: Path) -> None:
    backend = FakeVolumeBackend(capacity_bytes=MiB)
    p = pool(backend, tmp_path)
    big = DesiredVolume(id="big", size_bytes=2 * MiB, generation=1)
    assert "needs" in p.converge([big])[0].error
    backend.capacity_bytes = 4 * MiB
    assert p.converge([big])[0].error  # not retried at the same generation
    assert not backend.exists("big")
    assert not p.converge([big.model_copy(update={"generation": 2})])[0].error


def test_keeps_an_instance_root_disk_only_when_asked(tmp_path: Path) -> None:
    backend = FakeVolumeBackend()
    p = pool(backend, tmp_path)
    root = DesiredVolume(id="r", size_bytes=MiB, generation=1, instance_root="vm")
    assert not p.converge([root])[0].exists  # the instance still runs
    p.keep_root("vm")  # the agent deletes the instance: copy first
    assert backend.exists("r") and p.observe(root).exists
