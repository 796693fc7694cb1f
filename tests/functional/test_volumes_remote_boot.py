"""A guest on one host boots from a bootable volume in another host's iSCSI pool, through real
processes (tgtd, QEMU's iSCSI initiator) and the tiny appliance.

Two node agents on this machine stand in for two hosts, as in test_volumes_multihost.py:
``node-a`` holds an iSCSI pool (its agent starts its own ``tgtd`` on a private portal),
``localhost`` (host B) runs the guest. The controller asks A to export the boot volume to B;
B's QEMU opens A's target as ``vda``; what the guest writes lands in A's volume; deleting the
instance withdraws the target and leaves the volume.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stratuslab.appliances.tiny import READY_MARKER
from stratuslab.client.volumes import VolumesAPI
from stratuslab.drivers.storage.tgt import Tgtadm
from stratuslab.schemas.instances import InstanceCreate
from stratuslab.schemas.volumes import VolumeCreate
from tests.functional.cloud import wait_for
from tests.functional.test_allinone import ssh_until_ok
from tests.functional.test_volumes_multihost import TwoHosts, two_hosts

pytestmark = pytest.mark.functional

__all__ = ["two_hosts"]  # the fixture

MARKER = "WRITTEN-BY-GUEST-ON-B-TO-ITS-BOOT-VOLUME"


def test_guest_on_host_b_boots_from_an_iscsi_volume_of_host_a(
    two_hosts: TwoHosts, ssh_key: Path
) -> None:
    cloud, client = two_hosts.cloud, two_hosts.cloud.client
    api = VolumesAPI(client)
    two_hosts.start_a()
    wait_for(
        lambda: any("volume_free_bytes" in h.usage for h in client.list_hosts()), 90, "A's pool"
    )
    (host_a,) = client.list_hosts()
    made = api.create(VolumeCreate(name="sys", image="tiny"))
    done = client.wait_operation(made.operation.id, timeout=120)
    assert done.status == "succeeded", done.error
    vol = made.volume.id
    assert api.get("sys").host_id == host_a.id

    two_hosts.start_b()
    wait_for(lambda: len(client.list_hosts()) == 2, 90, "host B to join")
    created = client.create_instances(
        InstanceCreate(
            image="tiny",
            flavor="t1.micro",
            name="on-b",
            ssh_keys=[Path(f"{ssh_key}.pub").read_text()],
            boot_volume="sys",
            requirements='NAME = "localhost"',
        )
    )
    assert created.instances[0].host_id not in (None, host_a.id)  # placed on B at once
    op = client.wait_operation(created.operation.id, timeout=240)
    assert op.status == "succeeded", op.error
    iqn = f"iqn.2011-01.eu.stratuslab:{vol}"
    tgtadm = Tgtadm(two_hosts.control)
    assert tgtadm.targets()[iqn].sessions == ["127.0.0.1"]  # B's QEMU logged in to A
    assert not (two_hosts.b_state / "volumes" / "volumes" / f"{vol}.raw").exists()

    port = int(created.instances[0].ssh_port or 0)
    wait_for(lambda: READY_MARKER in cloud.console("on-b"), 180, "on-b READY")
    ssh_until_ok(port, ssh_key, f"echo {MARKER} > /root/marker && sync")
    data = two_hosts.a_state / "volumes" / "volumes" / f"{vol}.raw"
    assert MARKER.encode() in data.read_bytes()  # the guest's root disk is A's volume

    deleted = client.wait_operation(client.delete_instance("on-b").id, timeout=120)
    assert deleted.status == "succeeded", deleted.error
    wait_for(lambda: iqn not in tgtadm.targets(), 60, "A to withdraw the target")
    assert api.get("sys").state == "available"
