"""Volumes across hosts and saved root disks, through real processes and the tiny appliance.

* Two node agents on this machine with their own state directories stand in for two hosts:
  ``node-a`` holds an iSCSI volume pool (its agent starts its own ``tgtd``, on a private
  portal and control port), ``localhost`` (host B) runs the guest. The volume of host A is
  hot-plugged into B's guest through QEMU's initiator at A's portal; the guest reads what was
  written on A and writes back; A withdraws the target after the detach, and A's agent stops
  the ``tgtd`` it started when it exits.
* A stopped instance's root disk saved as a volume (``stratus volume create --from-instance``)
  holds the same data as the root disk, and a new instance boots from it.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratuslab.appliances.tiny import READY_MARKER
from stratuslab.client.volumes import VolumesAPI
from stratuslab.drivers.storage.tgt import Tgtadm, TgtDaemon
from stratuslab.schemas.instances import InstanceCreate
from stratuslab.schemas.volumes import VolumeCreate
from tests.contract.test_volume_backend import free_control_port, free_port
from tests.functional.cloud import BIN, Cloud, _undefine_leftovers, wait_for
from tests.functional.test_allinone import ssh_until_ok
from tests.functional.test_volumes_cloud import boot, device, read

pytestmark = pytest.mark.functional

MARKER_A = "WRITTEN-ON-HOST-A"
MARKER_B = "WRITTEN-BY-GUEST-ON-B"


class TwoHosts:
    """A controller (``cloud``) and two agents: ``node-a`` (iSCSI pool) and ``localhost``."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.portal = free_port()
        self.control = free_control_port()
        self.a_state = cloud.root / "node-a"
        self.b_state = cloud.root / "node-b"
        self.a: subprocess.Popen[bytes] | None = None
        self.b: subprocess.Popen[bytes] | None = None

    def start(self, state: Path, hostname: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        token = self.cloud.client.create_join_token().token
        args = [str(BIN / "stratus-node"), "--state-dir", str(state), "--hostname", hostname]
        with (self.cloud.root / f"{hostname}.log").open("ab") as log:
            return subprocess.Popen(
                [*args, "--join", self.cloud.url, token],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.cloud.env, **env},
            )

    def start_a(self) -> None:
        self.a = self.start(
            self.a_state,
            "node-a",
            {
                "STRATUS_NODE_VOLUME_BACKEND": "iscsi",
                "STRATUS_NODE_VOLUME_PORTAL": "127.0.0.1",
                "STRATUS_NODE_VOLUME_PORTAL_PORT": str(self.portal),
                "STRATUS_NODE_VOLUME_TGTD_CONTROL_PORT": str(self.control),
            },
        )

    def start_b(self) -> None:
        self.b = self.start(self.b_state, "localhost", {})

    def stop(self, which: str) -> None:
        proc: subprocess.Popen[bytes] | None = getattr(self, which)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        setattr(self, which, None)

    def close(self) -> None:
        client = self.cloud.client
        try:
            for inst in client.iter_instances():
                client.wait_operation(client.delete_instance(inst.id).id, timeout=60)
        finally:
            self.stop("b")
            self.stop("a")
            for state in (self.a_state, self.b_state):
                _undefine_leftovers(state)
            pid_file = self.a_state / "tgtd.pid"  # safety net: stop A's tgtd by its PID
            if pid_file.exists():
                daemon = TgtDaemon.adopt(int(pid_file.read_text()), control_port=self.control)
                if daemon is not None:
                    daemon.stop()


@pytest.fixture
def two_hosts(tiny_image: Path) -> Iterator[TwoHosts]:
    root = Path(tempfile.mkdtemp(prefix="stratus-ftest-", dir="/var/tmp"))
    root.chmod(0o755)
    cloud = Cloud(root, ssh_port_base=23000 + secrets.randbelow(40) * 50)
    hosts = TwoHosts(cloud)
    try:
        cloud.start_controller()
        cloud.client.upload_image(tiny_image, "tiny")
        yield hosts
    finally:
        try:
            hosts.close()
        finally:
            cloud.client.close()
            cloud.kill("controller", signal.SIGTERM)
            shutil.rmtree(root, ignore_errors=True)


def test_guest_on_host_b_uses_an_iscsi_volume_of_host_a(two_hosts: TwoHosts, ssh_key: Path) -> None:
    cloud, client = two_hosts.cloud, two_hosts.cloud.client
    api = VolumesAPI(client)
    two_hosts.start_a()
    wait_for(
        lambda: any("volume_free_bytes" in h.usage for h in client.list_hosts()), 90, "A's pool"
    )
    # A's agent started a tgtd of its own on the private portal
    tgtadm = Tgtadm(two_hosts.control)
    assert tgtadm.ready(), cloud.log("node-a")
    assert (two_hosts.a_state / "tgtd.pid").exists()
    (host_a,) = client.list_hosts()
    assert host_a.usage.get("volume_shared") == 1.0

    made = api.create(VolumeCreate(name="shared", size_gib=0.0625))
    client.wait_operation(made.operation.id, timeout=60)
    vol = made.volume.id
    assert api.get("shared").host_id == host_a.id
    data = two_hosts.a_state / "volumes" / "volumes" / f"{vol}.raw"
    with data.open("r+b") as f:  # what host A's storage holds before B's guest sees it
        f.write(MARKER_A.encode())

    two_hosts.start_b()
    wait_for(lambda: len(client.list_hosts()) == 2, 90, "host B to join")
    created = client.create_instances(
        InstanceCreate(
            image="tiny",
            flavor="t1.micro",
            name="on-b",
            ssh_keys=[Path(f"{ssh_key}.pub").read_text()],
            requirements='NAME = "localhost"',
        )
    )
    client.wait_operation(created.operation.id, timeout=240)
    inst = client.get_instance("on-b")
    assert inst.host_id != host_a.id
    port = int(created.instances[0].ssh_port or 0)
    wait_for(lambda: READY_MARKER in cloud.console("on-b"), 180, "on-b READY")
    ssh_until_ok(port, ssh_key, "true")

    attach = client.wait_operation(api.attach("shared", "on-b").id, timeout=120)
    assert attach.status == "succeeded", attach.error
    iqn = f"iqn.2011-01.eu.stratuslab:{vol}"
    target = tgtadm.targets()[iqn]
    assert target.sessions == ["127.0.0.1"]  # B's QEMU logged in to A's portal
    dev = device(port, ssh_key, vol)
    assert read(port, ssh_key, dev, len(MARKER_A)) == MARKER_A
    ssh_until_ok(
        port,
        ssh_key,
        f"printf '%s' '{MARKER_B}' | dd of={dev} bs=512 seek=1 conv=notrunc,fsync",
    )

    detach = client.wait_operation(api.detach("shared").id, timeout=120)
    assert detach.status == "succeeded", detach.error
    device(port, ssh_key, vol, present=False)
    wait_for(lambda: iqn not in tgtadm.targets(), 60, "A to withdraw the target")
    content = data.read_bytes()[:1024]
    assert content.startswith(MARKER_A.encode())
    assert content[512:].startswith(MARKER_B.encode())
    assert api.get("shared").state == "available"

    # A's agent exits with nothing logged in: the tgtd it started goes too
    two_hosts.stop("a")
    assert not tgtadm.ready()
    assert not (two_hosts.a_state / "tgtd.pid").exists()


def test_root_disk_saved_as_a_volume_equals_it_and_boots(cloud: Cloud, ssh_key: Path) -> None:
    api = VolumesAPI(cloud.client)
    wait_for(lambda: "volume_free_bytes" in cloud.client.list_hosts()[0].usage, 60, "the pool")
    port = boot(cloud, "orig", ssh_key)
    ssh_until_ok(port, ssh_key, "sync")
    stop = cloud.client.instance_action("orig", "stop")
    assert cloud.client.wait_operation(stop.id, timeout=120).status == "succeeded"
    orig = cloud.client.get_instance("orig")

    made = api.create(VolumeCreate(name="saved", instance="orig"))
    done = cloud.client.wait_operation(made.operation.id, timeout=240)
    assert done.status == "succeeded", done.error
    saved = api.get("saved")
    assert (saved.kind, saved.state, saved.host_id) == ("bootable", "available", orig.host_id)
    root = cloud.state / "instances" / orig.id / "root.qcow2"
    copy = cloud.state / "volumes" / "volumes" / f"{saved.id}.qcow2"
    compare = subprocess.run(
        ["qemu-img", "compare", "-U", str(root), str(copy)], capture_output=True, text=True
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr

    created = cloud.client.create_instances(
        InstanceCreate(
            image="tiny",
            flavor="t1.micro",
            name="from-saved",
            ssh_keys=[Path(f"{ssh_key}.pub").read_text()],
            boot_volume="saved",
        )
    )
    op = cloud.client.wait_operation(created.operation.id, timeout=240)
    assert op.status == "succeeded", op.error
    wait_for(lambda: READY_MARKER in cloud.console("from-saved"), 180, "from-saved READY")
    assert ssh_until_ok(int(created.instances[0].ssh_port or 0), ssh_key, "hostname").strip()
