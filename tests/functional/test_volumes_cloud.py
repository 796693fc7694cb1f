"""Volumes through the real cloud: controller and agent processes, the agent's `file`
volume pool, the tiny appliance under QEMU. A marker written in one guest is read back in
another; a snapshot taken before a write does not see it."""

from __future__ import annotations

from pathlib import Path

import pytest

from stratuslab.appliances.tiny import READY_MARKER
from stratuslab.client.volumes import VolumesAPI
from stratuslab.drivers.base import VOLUME_SERIAL_CHARS
from stratuslab.schemas.volumes import VolumeCreate
from tests.functional.cloud import Cloud, wait_for
from tests.functional.test_allinone import run, ssh, ssh_until_ok

pytestmark = pytest.mark.functional


def device(port: int, key: Path, volume_id: str, *, present: bool = True) -> str:
    """Poll in the guest for the disk whose serial is the volume's; its /dev path."""
    serial = volume_id[:VOLUME_SERIAL_CHARS]
    script = (
        "for d in /sys/block/vd*; do "
        f'[ "$(cat $d/serial 2>/dev/null)" = "{serial}" ] && echo /dev/${{d##*/}}; done; true'
    )
    found: list[str] = []

    def check() -> bool:
        out = ssh(port, key, script).stdout.strip()
        found[:] = [out]
        return bool(out) == present

    wait_for(check, 60, f"volume {volume_id} present={present} in the guest", interval=1.0)
    return found[0]


def write(port: int, key: Path, dev: str, marker: str) -> None:
    ssh_until_ok(port, key, f"printf '%s' '{marker}' | dd of={dev} bs=512 conv=notrunc,fsync")


def read(port: int, key: Path, dev: str, length: int) -> str:
    return ssh_until_ok(port, key, f"dd if={dev} bs=512 count=1 2>/dev/null | head -c {length}")


def boot(cloud: Cloud, name: str, key: Path) -> int:
    op_id, port = run(cloud, name, key)
    cloud.client.wait_operation(op_id, timeout=240)
    wait_for(lambda: READY_MARKER in cloud.console(name), 180, f"{name} READY")
    ssh_until_ok(port, key, "true")
    return port


def test_marker_moves_between_guests_and_snapshot_is_point_in_time(
    cloud: Cloud, ssh_key: Path
) -> None:
    api = VolumesAPI(cloud.client)
    wait_for(lambda: "volume_free_bytes" in cloud.client.list_hosts()[0].usage, 60, "the pool")
    made = api.create(VolumeCreate(name="data", size_gib=0.0625))
    cloud.client.wait_operation(made.operation.id, timeout=60)
    vol = made.volume.id

    a = boot(cloud, "vol-a", ssh_key)
    cloud.client.wait_operation(api.attach("data", "vol-a").id, timeout=120)
    dev = device(a, ssh_key, vol)
    write(a, ssh_key, dev, "MARKER-ONE")
    assert read(a, ssh_key, dev, 10) == "MARKER-ONE"
    cloud.client.wait_operation(api.detach("data").id, timeout=120)
    device(a, ssh_key, vol, present=False)

    snap = api.snapshot("data", "data-snap")
    cloud.client.wait_operation(snap.operation.id, timeout=60)

    b = boot(cloud, "vol-b", ssh_key)
    cloud.client.wait_operation(api.attach("data", "vol-b").id, timeout=120)
    dev = device(b, ssh_key, vol)
    assert read(b, ssh_key, dev, 10) == "MARKER-ONE"
    write(b, ssh_key, dev, "MARKER-TWO")
    cloud.client.wait_operation(api.attach("data-snap", "vol-b").id, timeout=120)
    snap_dev = device(b, ssh_key, snap.volume.id)
    assert read(b, ssh_key, snap_dev, 10) == "MARKER-ONE"
    assert read(b, ssh_key, dev, 10) == "MARKER-TWO"
    assert api.get("data").state == "in-use" and api.get("data-snap").readonly
