"""Build the tiny appliance, boot it under plain QEMU (TCG) and log in over SSH.

The image is cached in ``$STRATUS_TEST_CACHE/tiny`` (default ``/var/cache/stratuslab-test``),
so reruns only pay for the boots. Every QEMU started here is killed by PID at the end.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratuslab.appliances.tiny import READY_MARKER, build_tiny
from stratuslab.context import build_nocloud, write_seed_iso

pytestmark = pytest.mark.functional

CACHE = Path(os.environ.get("STRATUS_TEST_CACHE", "/var/cache/stratuslab-test")) / "tiny"
TOOLS = ("qemu-system-x86_64", "qemu-img", "apt-get", "extlinux", "mkfs.ext4", "ssh", "ssh-keygen")
READY_RE = re.compile(rf"{READY_MARKER} hostname=(\S+) instance-id=(\S+)")
BOOT_TIMEOUT = 120.0


@dataclass
class Guest:
    process: subprocess.Popen[bytes]
    serial: Path
    monitor: Path
    ssh_port: int

    def console(self) -> str:
        return self.serial.read_bytes().decode(errors="replace") if self.serial.exists() else ""

    def wait_ready(self, count: int = 1) -> re.Match[str]:
        """The ``count``-th READY line, once the guest printed it."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            matches = list(READY_RE.finditer(self.console()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.process.poll() is not None:
                status = self.process.returncode
                pytest.fail(f"QEMU exited with {status}:\n{self.console()[-3000:]}")
            time.sleep(0.1)
        pytest.fail(f"no {READY_MARKER} line after {BOOT_TIMEOUT} s:\n{self.console()[-3000:]}")

    def powerdown(self) -> None:
        with socket.socket(socket.AF_UNIX) as mon:
            mon.connect(str(self.monitor))
            mon.sendall(b"system_powerdown\n")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    if os.geteuid() != 0:
        pytest.skip("building the tiny appliance needs root (loop device + mount)")
    started = time.monotonic()
    image = build_tiny(tmp_path_factory.mktemp("tiny") / "tiny.qcow2", cache_dir=CACHE)
    size = image.stat().st_size / 2**20
    print(f"tiny appliance: {size:.1f} MiB, built or fetched in {time.monotonic() - started:.1f} s")
    return image


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_boots_reads_seed_and_serves_ssh(
    tiny_image: Path, ssh_key: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    digest = _sha256(tiny_image)
    files = build_nocloud(
        instance_id="i-functional-1",
        hostname="tiny-test-1",
        ssh_keys=[ssh_key.with_suffix(".pub").read_text()],
    )
    write_seed_iso(files, tmp_path / "seed.iso")
    started = time.monotonic()
    with _qemu(tiny_image, tmp_path, seed=tmp_path / "seed.iso") as guest:
        match = guest.wait_ready()
        boot = time.monotonic() - started
        record_property("boot_to_ready_seconds", round(boot, 2))
        print(f"tiny appliance: READY after {boot:.1f} s under TCG")
        assert match.groups() == ("tiny-test-1", "i-functional-1")
        assert _ssh(guest, ssh_key, "hostname") == "tiny-test-1"
        assert _ssh(guest, ssh_key, "id -u; cat /root/.ssh/authorized_keys | wc -l") == "0\n1"
        _ssh(guest, ssh_key, "reboot")
        assert guest.wait_ready(count=2).groups() == ("tiny-test-1", "i-functional-1")
        assert _ssh(guest, ssh_key, "hostname") == "tiny-test-1"
        stopped = time.monotonic()
        guest.powerdown()
        assert guest.process.wait(timeout=30) == 0
        record_property("acpi_poweroff_seconds", round(time.monotonic() - stopped, 2))
        assert "Requesting system poweroff" in guest.console()
    assert _sha256(tiny_image) == digest, "booting must not change the built image"


def test_boots_without_seed_and_says_so(tiny_image: Path, tmp_path: Path) -> None:
    with _qemu(tiny_image, tmp_path, seed=None) as guest:
        match = guest.wait_ready()
        assert match.groups() == ("stratus-tiny", "none")
        assert "WARNING: no NoCloud seed" in guest.console()


@contextmanager
def _qemu(image: Path, work: Path, *, seed: Path | None) -> Iterator[Guest]:
    overlay = work / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)],
        check=True,
    )
    port = _free_port()
    guest_args = ["-drive", f"file={overlay},if=virtio"]
    if seed is not None:
        guest_args += ["-drive", f"file={seed},if=virtio,format=raw,readonly=on"]
    serial, monitor = work / "serial.log", work / "monitor.sock"
    args = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic",
        "-serial", f"file:{serial}",
        "-monitor", f"unix:{monitor},server,nowait",
        *guest_args,
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    with (work / "qemu.out").open("wb") as out:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield Guest(process=process, serial=serial, monitor=monitor, ssh_port=port)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _ssh(guest: Guest, key: Path, command: str) -> str:
    args = [
        "ssh", "-i", str(key), "-p", str(guest.ssh_port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
        "root@127.0.0.1", command,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"ssh failed: {done.stderr}\n{guest.console()[-2000:]}"
    return done.stdout.strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
