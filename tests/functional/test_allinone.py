"""A real QEMU boot through the whole stack, and crashes of each process mid-flight.

API -> scheduler -> agent -> libvirt -> QEMU (TCG here) -> tiny appliance: its console line
comes back through the API and a command runs in it over SSH on the forwarded port.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stratuslab.appliances.tiny import READY_MARKER
from stratuslab.schemas.instances import InstanceCreate
from tests.functional.cloud import Cloud, wait_for

pytestmark = pytest.mark.functional


def ssh(port: int, key: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(key),
            "-p",
            str(port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ssh_until_ok(port: int, key: Path, command: str, timeout: float = 90) -> str:
    result: list[str] = []

    def attempt() -> bool:
        proc = ssh(port, key, command)
        if proc.returncode == 0:
            result.append(proc.stdout)
        return proc.returncode == 0

    wait_for(attempt, timeout, f"ssh on port {port}", interval=1.0)
    return result[0]


def run(cloud: Cloud, name: str, key: Path) -> tuple[str, int]:
    created = cloud.client.create_instances(
        InstanceCreate(
            image="tiny", flavor="t1.micro", name=name, ssh_keys=[Path(f"{key}.pub").read_text()]
        )
    )
    return created.operation.id, int(created.instances[0].ssh_port or 0)


def test_boot_console_and_ssh_through_the_whole_stack(cloud: Cloud, ssh_key: Path) -> None:
    op_id, port = run(cloud, "hello", ssh_key)
    op = cloud.client.wait_operation(op_id, timeout=120)
    assert op.status == "succeeded", cloud.log("node")
    inst = cloud.client.get_instance("hello")
    assert inst.status == "running"
    assert inst.address == f"127.0.0.1:{port}"
    wait_for(lambda: READY_MARKER in cloud.console("hello"), 120, "the READY console line")
    assert "hostname=hello" in cloud.console("hello")
    assert ssh_until_ok(port, ssh_key, "hostname").strip() == "hello"

    stop = cloud.client.instance_action("hello", "stop")
    assert cloud.client.wait_operation(stop.id, timeout=60).status == "succeeded"
    start = cloud.client.instance_action("hello", "start")
    assert cloud.client.wait_operation(start.id, timeout=60).status == "succeeded"
    assert ssh_until_ok(port, ssh_key, "hostname").strip() == "hello"

    kill = cloud.client.delete_instance("hello")
    assert cloud.client.wait_operation(kill.id, timeout=60).status == "succeeded"
    assert not (cloud.state / "instances" / inst.id).exists()
    domains = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"stratus-{inst.id}" not in domains


def test_agent_killed_mid_boot_converges(cloud: Cloud, ssh_key: Path) -> None:
    op_id, port = run(cloud, "phoenix", ssh_key)
    inst_id = cloud.client.get_instance("phoenix").id
    wait_for(lambda: (cloud.state / "instances" / inst_id).exists(), 60, "provisioning to begin")
    cloud.kill("node")
    cloud.start_node()
    op = cloud.client.wait_operation(op_id, timeout=120)
    assert op.status == "succeeded", cloud.log("node")
    assert ssh_until_ok(port, ssh_key, "hostname").strip() == "phoenix"
    domains = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert domains.count(f"stratus-{inst_id}") == 1


def test_controller_restarted_mid_operation_converges(cloud: Cloud, ssh_key: Path) -> None:
    op_id, port = run(cloud, "survivor", ssh_key)
    cloud.kill("controller")
    cloud.start_controller()
    op = cloud.client.wait_operation(op_id, timeout=120)
    assert op.status == "succeeded", cloud.log("node")
    assert cloud.client.get_instance("survivor").status == "running"
    assert ssh_until_ok(port, ssh_key, "hostname").strip() == "survivor"
