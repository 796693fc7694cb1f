"""Two node agents on this machine (separate state directories, one libvirtd): instances are
placed on both hosts, and one is cold-migrated between them with its root disk.

Both agents share the system libvirt daemon; each owns the domains whose instance directories
are in its own state directory, so neither fences the other's guests. SSH ports are handed
out cloud-wide (``ssh_port_scope = cloud``) because both hosts forward on this machine's
loopback.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratuslab.appliances.tiny import READY_MARKER
from stratuslab.schemas.instances import InstanceCreate
from tests.functional.cloud import BIN, Cloud, _undefine_leftovers, wait_for
from tests.functional.test_allinone import ssh, ssh_until_ok
from tests.functional.test_live_migration import Daemon, second_libvirtd

__all__ = ["second_libvirtd"]  # the fixture, shared with test_live_migration

pytestmark = pytest.mark.functional


@pytest.fixture
def two_hosts(tiny_image: Path) -> Iterator[Cloud]:
    root = Path(tempfile.mkdtemp(prefix="stratus-ftest-", dir="/var/tmp"))
    root.chmod(0o755)
    c = Cloud(root, ssh_port_base=24000 + secrets.randbelow(40) * 50)
    c.env["STRATUS_SSH_PORT_SCOPE"] = "cloud"
    c.env["STRATUS_SCHEDULER_STRATEGY"] = "stripe"
    second = None
    try:
        c.start_controller()
        c.start_node()
        wait_for(lambda: len(c.client.list_hosts()) == 1, 60, "the first node to join")
        token = c.client.create_join_token(600).token
        state_b = root / "node-b"
        second = c._spawn(
            [
                str(BIN / "stratus-node"),
                "--state-dir",
                str(state_b),
                "--hostname",
                "node-b",
                "--join",
                c.url,
                token,
            ],
            "node-b.log",
        )
        wait_for(lambda: len(c.client.list_hosts()) == 2, 60, "the second node to join")
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
                except Exception:
                    second.kill()
            _undefine_leftovers(root / "node-b")
            shutil.rmtree(root, ignore_errors=True)


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
    root = Path(tempfile.mkdtemp(prefix="stratus-ftest-", dir="/var/tmp"))
    root.chmod(0o755)
    c = Cloud(root, ssh_port_base=25000 + secrets.randbelow(40) * 50)
    c.env["STRATUS_SSH_PORT_SCOPE"] = "cloud"
    c.env["STRATUS_NODE_MIGRATION_URI"] = "qemu:///system"
    c.env["STRATUS_NODE_MIGRATION_STREAM"] = "tcp://127.0.0.1"
    second = None
    try:
        c.start_controller()
        c.start_node()
        wait_for(lambda: len(c.client.list_hosts()) == 1, 60, "node A to join")
        env = {
            **c.env,
            "STRATUS_NODE_MIGRATION_URI": second_libvirtd.uri,
            "STRATUS_NODE_LIBVIRT_URI": second_libvirtd.uri,
        }
        token = c.client.create_join_token(600).token
        args = [str(BIN / "stratus-node"), "--state-dir", str(root / "node-b")]
        args += ["--hostname", "node-b", "--join", c.url, token]
        with (root / "node-b.log").open("ab") as log:
            second = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
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
                        ["virsh", "-c", second_libvirtd.uri, cmd, f"stratus-{d.name}"],
                        capture_output=True,
                        check=False,
                    )
            shutil.rmtree(root, ignore_errors=True)


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
