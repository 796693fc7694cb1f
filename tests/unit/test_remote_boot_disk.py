"""The boot disk of an instance booting from a volume of another host's pool
(agent/volumes.py ``boot_disk``, ``boot_wait_reason``), and the reconciler waiting for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.volumes import boot_disk, boot_wait_reason
from stratuslab.agent.workspace import FakeWorkspace
from stratuslab.drivers.base import NetworkSource
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.errors import InvalidInput
from stratuslab.schemas.agent import DesiredInstance, ImageRef
from stratuslab.types import Hypervisor, PowerState

IID = "6f1c9a52-3b0e-4d8e-9a51-2c7a0e4b1d10"
IQN = "iqn.2011-01.eu.stratuslab:v1"


def desired(**kw: Any) -> DesiredInstance:
    return DesiredInstance(
        id=IID, name="vm", hostname="vm", generation=1, desired="running", vcpus=1,
        memory_mib=256, image=ImageRef(id="i", sha256="0" * 64, format="qcow2", size_bytes=1),
        ssh_port=None, ssh_keys=[], user_data=None, reboot_seq=0, reboot_hard=False,
        stop_timeout=5.0, boot_volume="v1", **{"boot_volume_remote": True, **kw},
    )  # fmt: skip


def test_iscsi_and_file_urls_open_without_a_pool() -> None:
    disk = boot_disk(None, desired(boot_volume_url=f"iscsi://10.0.0.3:3261/{IQN}/1"))
    assert disk is not None and (disk.target, disk.boot_order, disk.format) == ("vda", 1, "raw")
    assert disk.network == NetworkSource("iscsi", f"{IQN}/1", "10.0.0.3", 3261)
    disk = boot_disk(
        None, desired(boot_volume_url="file:///shared/v1.qcow2", boot_volume_format="qcow2")
    )
    assert disk is not None and (disk.path, disk.format, disk.network) == (
        Path("/shared/v1.qcow2"),
        "qcow2",
        None,
    )
    with pytest.raises(InvalidInput):
        boot_disk(None, desired(boot_volume_url="nbd://x/y"))


def test_no_url_yet_means_wait_not_fail() -> None:
    assert "waiting for the host of boot volume v1" in boot_wait_reason(desired())
    assert boot_wait_reason(desired(boot_volume_url="file:///x")) == ""
    assert boot_wait_reason(desired(boot_volume_remote=False)) == ""

    driver = FakeComputeDriver(hostname="b", vcpus=4, memory_mib=4096)
    rec = Reconciler(driver, FakeWorkspace(), FakeImageCache(), hypervisor=Hypervisor.QEMU)
    result = rec.converge(desired())
    assert (result.observed.status, result.observed.observed_generation) == ("provisioning", 1)
    assert "waiting for the host" in result.observed.reason
    assert driver.state(IID) is PowerState.MISSING

    result = rec.converge(desired(boot_volume_url="file:///shared/v1"))
    assert result.observed.status == "running"
    assert driver._domains[IID].spec.disks[0].path == Path("/shared/v1")
