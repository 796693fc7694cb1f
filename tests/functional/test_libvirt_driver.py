"""The libvirt driver against the real ``qemu:///system`` (TCG), and the KVM probe.

Domains are named ``stratus-ftest-<random>`` and removed however the test ends; other
domains are never touched. Disks live under /var/lib/stratuslab-test (mode 0755) so that
QEMU, running as libvirt-qemu, can reach them (libvirt chowns the files themselves).
"""

from __future__ import annotations

import grp
import os
import shutil
import socket
import subprocess
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratuslab.drivers.base import DiskSpec, DomainSpec, PortForward
from stratuslab.drivers.libvirt import LibvirtComputeDriver, kvm_probe
from stratuslab.errors import HypervisorUnavailable
from stratuslab.types import Hypervisor, PowerState

TEST_ROOT = Path("/var/lib/stratuslab-test")
ASM = Path(kvm_probe.__file__).with_name("kvm_probe.asm")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_qemu = pytest.mark.skipif(shutil.which(kvm_probe.QEMU) is None, reason="needs QEMU")


@pytest.fixture
def system() -> Iterator[LibvirtComputeDriver]:
    driver = LibvirtComputeDriver("qemu:///system", hypervisor=Hypervisor.QEMU)
    try:
        driver.capabilities()
    except HypervisorUnavailable as exc:
        pytest.skip(f"qemu:///system unavailable: {exc}")
    yield driver
    driver.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"ftest-{uuidlib.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def domain(system: LibvirtComputeDriver, workdir: Path) -> Iterator[DomainSpec]:
    """A TCG domain with an empty qcow2 disk: SeaBIOS finds nothing to boot."""
    disk = workdir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    uuid = str(uuidlib.uuid4())
    spec = DomainSpec(
        uuid=uuid,
        name=f"stratus-ftest-{uuid[:8]}",
        vcpus=1,
        memory_mib=64,
        disks=(DiskSpec(path=disk),),
        console_log=workdir / "console.log",
        port_forwards=(PortForward(host_port=free_port()),),
        tcg_tb_size_mib=32,
    )
    try:
        yield spec
    finally:
        system.undefine(uuid)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.2)
    return False


def console_text(spec: DomainSpec) -> str:
    try:
        return spec.console_log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def qemu_cmdline(spec: DomainSpec) -> list[str]:
    pid = Path(f"/run/libvirt/qemu/{spec.name}.pid").read_text().strip()
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.mark.functional
@needs_root
def test_domain_lifecycle_on_qemu_system(system: LibvirtComputeDriver, domain: DomainSpec) -> None:
    system.define(domain)
    assert system.state(domain.uuid) is PowerState.SHUTOFF

    system.start(domain.uuid)
    assert system.state(domain.uuid) is PowerState.RUNNING
    assert any(s.uuid == domain.uuid for s in system.list_domains())
    assert wait_until(lambda: "No bootable device" in console_text(domain), timeout=60), (
        console_text(domain)
    )
    assert "SeaBIOS" in console_text(domain)

    args = qemu_cmdline(domain)
    assert "tcg,tb-size=32" in args
    netdev = args[args.index("-netdev") + 1].split(",")
    assert "restrict=on" in netdev
    with socket.create_connection(("127.0.0.1", domain.port_forwards[0].host_port), 5):
        pass  # QEMU listens on the forwarded port

    system.start(domain.uuid)  # idempotent
    system.reset(domain.uuid)
    system.reboot(domain.uuid)
    system.shutdown(domain.uuid)  # ACPI: nothing in the guest acts on it
    assert system.state(domain.uuid) is PowerState.RUNNING

    system.destroy(domain.uuid)
    assert system.state(domain.uuid) is PowerState.SHUTOFF
    system.undefine(domain.uuid)
    assert system.state(domain.uuid) is PowerState.MISSING


@pytest.mark.functional
@needs_root
def test_undefine_forces_a_running_domain_off(
    system: LibvirtComputeDriver, domain: DomainSpec
) -> None:
    system.define(domain)
    system.start(domain.uuid)
    system.undefine(domain.uuid)
    assert system.state(domain.uuid) is PowerState.MISSING


@pytest.mark.functional
def test_capabilities_of_this_host(system: LibvirtComputeDriver) -> None:
    caps = system.capabilities()
    assert caps.arch == "x86_64"
    assert caps.vcpus == os.cpu_count()
    assert caps.hypervisor is Hypervisor.QEMU


@pytest.mark.functional
@needs_qemu
def test_kvm_probe_image_boots_under_tcg() -> None:
    result = kvm_probe.run_probe("tcg", timeout=10)
    assert result.ok, result.detail


def test_unreachable_libvirtd_is_hypervisor_unavailable() -> None:
    driver = LibvirtComputeDriver("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    with pytest.raises(HypervisorUnavailable) as caught:
        driver.state(str(uuidlib.uuid4()))
    assert "libvirtd -d" in caught.value.hint


@pytest.mark.skipif(shutil.which("nasm") is None, reason="needs nasm")
def test_embedded_probe_image_is_the_assembled_source(tmp_path: Path) -> None:
    image = tmp_path / "probe.img"
    subprocess.run(["nasm", "-f", "bin", "-o", str(image), str(ASM)], check=True)
    assert image.read_bytes() == kvm_probe.PROBE_IMAGE


def test_probe_answer_is_cached(tmp_path: Path) -> None:
    cache = tmp_path / "kvm.json"
    key = kvm_probe.probe_key()
    cache.write_text(f'{{"{key}": {{"ok": true}}}}')
    assert kvm_probe.kvm_usable(cache) is True
    cache.write_text(f'{{"{key}": {{"ok": false}}}}')
    assert kvm_probe.kvm_usable(cache) is False


def test_probe_result_is_written_to_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "sub" / "kvm.json"
    assert kvm_probe.kvm_usable(cache, qemu="/nonexistent/qemu") is False
    assert '"ok": false' in cache.read_text()


@needs_root
@pytest.mark.parametrize(
    ("group", "mode", "problem"), [("kvm", 0o660, False), ("root", 0o600, True)]
)
def test_check_kvm_device(tmp_path: Path, group: str, mode: int, problem: bool) -> None:
    device = tmp_path / "kvm"
    device.touch()
    os.chown(device, -1, grp.getgrnam(group).gr_gid)
    device.chmod(mode)
    message = kvm_probe.check_kvm_device(device)
    assert (message is not None) is problem
    if message is not None:
        assert f"chgrp kvm {device} && chmod 660 {device}" in message


def test_check_kvm_device_when_missing(tmp_path: Path) -> None:
    assert "does not exist" in str(kvm_probe.check_kvm_device(tmp_path / "kvm"))


@needs_root
def test_fix_kvm_device_permissions(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.touch(mode=0o600)
    kvm_probe.fix_kvm_device_permissions(device)
    assert kvm_probe.check_kvm_device(device) is None
