"""Build the debian-12-base recipe, boot it under plain QEMU (TCG) and log in over SSH.

The image is cached in ``$STRATUS_TEST_CACHE/recipes`` (default ``/var/cache/stratuslab-test``):
reruns only pay for the boot. The guest gets a NoCloud seed (as a virtio disk: the -cloud kernel
does not see a SATA CD-ROM) whose user data is a MIME multipart of a cloud-config and a shell
script; the test checks the hostname, the injected key (it logs in as root with it) and the
files both parts wrote. QEMU is killed by PID at the end whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratuslab.appliances.builder import build_recipe
from stratuslab.appliances.recipe import resolve_recipe
from stratuslab.context import (
    ContextMethod,
    ContextSpec,
    build_user_data,
    validate_user_data,
    write_context_iso,
)
from stratuslab.context.userdata import make_part

pytestmark = [pytest.mark.functional, pytest.mark.slow]

CACHE = Path(os.environ.get("STRATUS_TEST_CACHE", "/var/cache/stratuslab-test")) / "recipes"
TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "extlinux", "ssh", "ssh-keygen")
SSH_TIMEOUT = 180.0
CLOUD_CONFIG = b"""#cloud-config
write_files:
  - path: /root/from-cloud-config
    content: written by cloud-config
    permissions: "0600"
"""
SCRIPT = b'#!/bin/sh\necho "script ran as $(id -un)" > /root/from-script\n'


@dataclass
class Guest:
    process: subprocess.Popen[bytes]
    serial: Path
    ssh_port: int
    key: Path

    def console(self) -> str:
        return self.serial.read_bytes().decode(errors="replace") if self.serial.exists() else ""

    def ssh(self, command: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        args = [
            "ssh", "-i", str(self.key), "-p", str(self.ssh_port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", command,
        ]  # fmt: skip
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)

    def wait_ssh(self) -> float:
        started = time.monotonic()
        while time.monotonic() - started < SSH_TIMEOUT:
            if self.process.poll() is not None:
                pytest.fail(
                    f"QEMU exited with {self.process.returncode}:\n{self.console()[-3000:]}"
                )
            try:
                if self.ssh("true", timeout=15).returncode == 0:
                    return time.monotonic() - started
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        pytest.fail(f"no SSH after {SSH_TIMEOUT} s:\n{self.console()[-3000:]}")

    def run(self, command: str) -> str:
        done = self.ssh(command)
        assert done.returncode == 0, f"{command}: {done.stderr}\n{self.console()[-2000:]}"
        return done.stdout.strip()


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("building an appliance needs root (debootstrap, loop device, mount)")
    started = time.monotonic()
    messages: list[str] = []
    result = build_recipe(
        resolve_recipe("debian-12-base"),
        tmp_path_factory.mktemp("d12") / "debian-12-base.qcow2",
        cache_dir=CACHE,
        progress=messages.append,
    )
    elapsed = time.monotonic() - started
    how = "reused from cache" if result.cached else "built"
    size = result.image.stat().st_size / 2**20
    print(f"debian-12-base: {size:.0f} MiB qcow2, {how} in {elapsed:.1f} s")
    metadata = json.loads(result.metadata_path.read_text())
    assert metadata["sha256"] == hashlib.sha256(result.image.read_bytes()).hexdigest()
    assert (metadata["name"], metadata["os"], metadata["os_version"]) == (
        "debian-12-base",
        "debian",
        "12",
    )
    assert metadata["arch"] == "amd64"
    assert "cloud-init" in metadata["packages"]
    return result.image


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_boots_applies_nocloud_seed_and_serves_ssh(
    base_image: Path, ssh_key: Path, tmp_path: Path
) -> None:
    user_data = build_user_data(
        [make_part(CLOUD_CONFIG, filename="config.yaml"), make_part(SCRIPT, filename="run.sh")],
        compress=True,
    )
    validate_user_data(user_data)
    spec = ContextSpec(
        instance_id="i-d12-functional",
        hostname="d12-test",
        ssh_keys=(ssh_key.with_suffix(".pub").read_text(),),
        user_data=user_data,
    )
    seed = write_context_iso(ContextMethod.NOCLOUD, spec, tmp_path / "seed.iso")
    digest = hashlib.sha256(base_image.read_bytes()).hexdigest()
    started = time.monotonic()
    with _qemu(base_image, tmp_path, seed=seed, key=ssh_key) as guest:
        to_ssh = guest.wait_ssh()
        assert guest.run("hostname") == "d12-test"
        guest.run("cloud-init status --wait >/dev/null || true")
        to_cloud_init = time.monotonic() - started
        assert guest.run("cat /root/from-cloud-config") == "written by cloud-config"
        assert guest.run("stat -c %a /root/from-cloud-config") == "600"
        assert guest.run("cat /root/from-script") == "script ran as root"
        assert guest.run("cloud-init query ds.meta_data.instance_id || cat "
                         "/var/lib/cloud/data/instance-id") == "i-d12-functional"  # fmt: skip
        status = json.loads(guest.run("cloud-init status --format json"))
        assert status["errors"] == [], status
        assert guest.run("cat /etc/machine-id | wc -c") == "33"  # made at first boot
        print(
            f"debian-12-base under TCG (1 GiB, 1 vCPU): SSH after {to_ssh:.1f} s, "
            f"cloud-init done after {to_cloud_init:.1f} s"
        )
        stopping = time.monotonic()
        guest.ssh("systemctl poweroff", timeout=30)
        assert guest.process.wait(timeout=90) == 0
        print(f"debian-12-base: powered off in {time.monotonic() - stopping:.1f} s")
    assert hashlib.sha256(base_image.read_bytes()).hexdigest() == digest


@contextmanager
def _qemu(image: Path, work: Path, *, seed: Path, key: Path) -> Iterator[Guest]:
    overlay = work / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)],
        check=True,
    )
    port = _free_port()
    serial = work / "serial.log"
    args = [
        "qemu-system-x86_64", "-accel", "tcg,tb-size=128", "-m", "1024", "-smp", "1",
        "-nographic", "-serial", f"file:{serial}", "-monitor", "none",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    with (work / "qemu.out").open("wb") as out:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield Guest(process=process, serial=serial, ssh_port=port, key=key)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
