"""Two node agents on this machine (separate state directories, one libvirtd): instances are
placed on both hosts, and one is cold-migrated between them with its root disk.

Both agents share the system libvirt daemon; each owns the domains whose instance directories
are in its own state directory, so neither fences the other's guests. SSH ports are handed
out cloud-wide (``ssh_port_scope = cloud``) because both hosts forward on this machine's
loopback.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratuslab.appliances.tiny import READY_MARKER
from stratuslab.schemas.instances import InstanceCreate
from tests.functional.cloud import BIN, Cloud, wait_for
from tests.functional.test_allinone import ssh, ssh_until_ok
from tests.functional.test_live_migration import Daemon, second_libvirtd

__all__ = ["second_libvirtd"]  # the fixture, shared with test_live_migration

pytestmark = pytest.mark.functional


@contextlib.contextmanager
def two_node_cloud(
    tiny_image: Path, env: dict[str, str], env_b: dict[str, str], libvirt_b: str = "qemu:///system"
) -> Iterator[Cloud]:
    """A controller, node A (the usual test node) and node B (``--hostname node-b``, its own
    state directory, on libvirt ``libvirt_b``), with the tiny appliance uploaded."""
    root = Path(tempfile.mkdtemp(prefix="stratus-ftest-", dir="/var/tmp"))
    root.chmod(0o755)
    c = Cloud(root, ssh_port_base=24000 + secrets.randbelow(80) * 25)
    c.env.update({"STRATUS_SSH_PORT_SCOPE": "cloud", **env})
    second: subprocess.Popen[bytes] | None = None
    try:
        c.start_controller()
        c.start_node()
        wait_for(lambda: len(c.client.list_hosts()) == 1, 60, "node A to join")
        token = c.client.create_join_token(600).token
        args = [str(BIN / "stratus-node"), "--state-dir", str(root / "node-b")]
        args += ["--hostname", "node-b", "--join", c.url, token]
        with (root / "node-b.log").open("ab") as log:
            second = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env={**c.env, **env_b}
            )
        wait_for(lambda: len(c.client.list_hosts()) == 2, 60, "node B to join")
        c.client.upload_image(tiny_image, "tiny")
        yield c
    finally:
        try:
            c.close()
        finally:
            if second is not None and second.poll() is None:
                second.terminate()
                try:
                    second.wait(15)
                except subprocess.TimeoutExpired:
                    second.kill()
            for d in (root / "node-b" / "instances").glob("*"):
                for cmd in ("destroy", "undefine"):
                    subprocess.run(
                        ["virsh", "-c", libvirt_b, cmd, f"stratus-{d.name}"],
                        capture_output=True,
                        check=False,
                    )
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def two_hosts(tiny_image: Path) -> Iterator[Cloud]:
    """Both agents on the system libvirtd; each owns only its own instances."""
    with two_node_cloud(tiny_image, {"STRATUS_SCHEDULER_STRATEGY": "stripe"}, {}) as c:
        yield c


def test_placed_on_both_hosts_and_cold_migrated(two_hosts: Cloud, ssh_key: Path) -> None:
    c = two_hosts
    pub = Path(f"{ssh_key}.pub").read_text()
    created = c.client.create_instances(
        InstanceCreate(image="tiny", flavor="t1.micro", name="pair", count=2, ssh_keys=[pub])
    )
    op = c.client.wait_operation(created.operation.id, timeout=240)
    assert op.status == "succeeded", c.log("node") + c.log("node-b")
    first, second = (c.client.get_instance(i.id) for i in created.instances)
    assert first.host_id != second.host_id  # stripe: one on each host
    for inst in (first, second):
        wait_for(lambda i=inst: READY_MARKER in c.console(i.id), 180, f"{inst.name} to boot")

    # a marker on the root disk of the first one, which then moves to the other host
    ssh_until_ok(int(first.ssh_port or 0), ssh_key, "echo moved-with-me > /root/marker; sync")
    target = c.client.get_host(second.host_id or "")
    op = c.client.migrate_instance(first.id, target.name)
    done = c.client.wait_operation(op.id, timeout=300)
    assert done.status == "succeeded", c.log("node") + c.log("node-b") + c.log("controller")
    wait_for(lambda: c.client.get_instance(first.id).migration is None, 30, "the move to end")
    moved = c.client.get_instance(first.id)
    assert moved.host_id == second.host_id and moved.status == "running"
    out = ssh_until_ok(int(moved.ssh_port or 0), ssh_key, "cat /root/marker", timeout=180)
    assert out.strip() == "moved-with-me"
    # the old host kept nothing of it; the new one has its disk
    source = c.client.get_host(first.host_id or "")
    dirs = {"node-b": c.root / "node-b"}
    assert not (dirs.get(source.name, c.state) / "instances" / first.id).exists()
    assert (dirs.get(target.name, c.state) / "instances" / first.id).exists()
    assert ssh(int(second.ssh_port or 0), ssh_key, "true").returncode == 0


@pytest.fixture
def live_hosts(tiny_image: Path, second_libvirtd: Daemon) -> Iterator[Cloud]:
    """Host A: an agent on the system libvirtd; host B: an agent on a second libvirtd (its
    own mount namespace and host UUID). Each names the other's hypervisor by URI."""
    env = {
        "STRATUS_NODE_MIGRATION_URI": "qemu:///system",
        "STRATUS_NODE_MIGRATION_STREAM": "tcp://127.0.0.1",
    }
    env_b = {
        "STRATUS_NODE_MIGRATION_URI": second_libvirtd.uri,
        "STRATUS_NODE_LIBVIRT_URI": second_libvirtd.uri,
    }
    with two_node_cloud(tiny_image, env, env_b, second_libvirtd.uri) as c:
        yield c


def test_live_migration_through_the_cloud(live_hosts: Cloud, ssh_key: Path) -> None:
    c = live_hosts
    pub = Path(f"{ssh_key}.pub").read_text()
    hosts = {h.name: h for h in c.client.list_hosts()}
    a = next(h for name, h in hosts.items() if name != "node-b")
    c.client.host_state("node-b", "disable")  # so that it starts on A
    created = c.client.create_instances(
        InstanceCreate(image="tiny", flavor="t1.micro", name="hot", ssh_keys=[pub])
    )
    c.client.host_state("node-b", "enable")
    op = c.client.wait_operation(created.operation.id, timeout=240)
    assert op.status == "succeeded", c.log("node")
    inst = c.client.get_instance("hot")
    assert inst.host_id == a.id
    wait_for(lambda: READY_MARKER in c.console("hot"), 180, "the guest to boot")
    before = ssh_until_ok(int(inst.ssh_port or 0), ssh_key, "cat /proc/sys/kernel/random/boot_id")
    ssh_until_ok(int(inst.ssh_port or 0), ssh_key, "echo live > /root/marker; sync")

    op = c.client.migrate_instance("hot", "node-b", live=True)
    done = c.client.wait_operation(op.id, timeout=300)
    assert done.status == "succeeded", c.log("node-b") + c.log("controller")
    moved = c.client.get_instance("hot")
    assert moved.host_id == hosts["node-b"].id and moved.status == "running"
    assert moved.ssh_port != inst.ssh_port
    port = int(moved.ssh_port or 0)
    after = ssh_until_ok(port, ssh_key, "cat /proc/sys/kernel/random/boot_id; cat /root/marker")
    boot_id, marker = after.split()
    assert boot_id == before.strip()  # the same running kernel: it never rebooted
    assert marker == "live"
    assert not (c.state / "instances" / moved.id).exists()  # host A let it go
