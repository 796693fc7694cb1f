"""Live migration of a real QEMU (TCG) guest between two libvirt daemons on this machine.

Host A is the system libvirtd (``qemu:///system``). Host B is a second libvirtd started by
``scripts/second-libvirtd.sh`` in a private mount namespace (its own /etc/libvirt,
/run/libvirt, /var/lib/libvirt, virtlogd and host UUID; the network namespace is shared, so
the migration stream and the guests' forwarded ports use loopback). Each host keeps its
instance files in its own directory, as two agents with separate state directories would:
``a/`` and ``b/`` under one test directory, each with an overlay on the same tiny appliance
base and a copy of the seed.

The guest runs a user-data script that prints ``TICK <n>`` on its serial console every second.
It is proven to be the same running guest after each move because: its kernel's ``boot_id``
is unchanged and its uptime went on (over SSH through the destination's forwarded port); a
file written and synced before the move is read back from disk after dropping the page
cache; the destination's console log carries on counting where the source's stopped and
shows no new boot; and its QEMU process belongs to the destination daemon.

Everything created is removed by PID, by domain uuid and by path, however the test ends.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratuslab.appliances.tiny import MIN_MEMORY_MIB, READY_MARKER, build_tiny
from stratuslab.context import build_nocloud, write_seed_iso
from stratuslab.drivers.base import (
    MIGRATION_FAILED,
    MIGRATION_REFUSED,
    MIGRATION_SAME_HOST,
    MIGRATION_TIMEOUT,
    MIGRATION_UNREACHABLE,
    MIGRATION_UNSAFE,
    DiskSpec,
    DomainSpec,
    MigrationOptions,
    PortForward,
)
from stratuslab.drivers.libvirt import LibvirtComputeDriver
from stratuslab.errors import Conflict, DriverError, HypervisorUnavailable, StratusError
from stratuslab.types import Hypervisor, PowerState
from tests.functional.cloud import TINY_CACHE

pytestmark = pytest.mark.functional

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "second-libvirtd.sh"
TEST_ROOT = Path("/var/lib/stratuslab-test")
SYSTEM_URI = "qemu:///system"
LOOPBACK = "tcp://127.0.0.1"
BOOT_TIMEOUT = 120.0
TICK_RE = re.compile(r"^TICK (\d+)\r?\n", re.MULTILINE)
TICKER = b"""#!/bin/sh
(i=0; while :; do echo "TICK $i"; i=$((i+1)); sleep 1; done) >/dev/console 2>&1 &
"""


@dataclass
class Daemon:
    """The second libvirtd: its directory, its process (libvirtd itself) and its URI."""

    root: Path
    process: subprocess.Popen[bytes]
    output: Path

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root}/run/libvirt-sock"

    def qemu_pid(self, name: str) -> int | None:
        pidfile = self.root / "run" / "qemu" / f"{name}.pid"
        return int(pidfile.read_text()) if pidfile.exists() else None


@pytest.fixture(scope="module")
def second_libvirtd() -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("a second libvirtd needs root")
    missing = [tool for tool in ("unshare", "libvirtd", "virtlogd", "qemu-img") if not _which(tool)]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    _system_or_skip()
    root = Path(tempfile.mkdtemp(prefix="stratus-lv2-", dir="/var/tmp"))
    output = Path(f"{root}.out")
    with output.open("wb") as out:
        process = subprocess.Popen(
            [str(SCRIPT), str(root)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    daemon = Daemon(root, process, output)
    try:
        _wait_for_daemon(daemon)
        yield daemon
    finally:
        _stop(daemon)


@pytest.fixture
def hosts(second_libvirtd: Daemon) -> Iterator[tuple[LibvirtComputeDriver, LibvirtComputeDriver]]:
    """(host A on the system libvirtd, host B on the second one)."""
    a = LibvirtComputeDriver(SYSTEM_URI, hypervisor=Hypervisor.QEMU)
    b = LibvirtComputeDriver(second_libvirtd.uri, hypervisor=Hypervisor.QEMU)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Disks must sit below directories QEMU (libvirt-qemu) can traverse."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"migrate-{uuidlib.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cleanup(
    hosts: tuple[LibvirtComputeDriver, LibvirtComputeDriver],
) -> Iterator[list[str]]:
    """uuids to undefine on both hosts at the end, whichever holds them."""
    uuids: list[str] = []
    yield uuids
    for uuid in uuids:
        for driver in hosts:
            driver.undefine(uuid)


# -- the proof --------------------------------------------------------------------------------


def test_a_running_guest_moves_to_another_daemon_and_back(
    hosts: tuple[LibvirtComputeDriver, LibvirtComputeDriver],
    second_libvirtd: Daemon,
    workdir: Path,
    cleanup: list[str],
    ssh_key: Path,
) -> None:
    a, b = hosts
    base = build_tiny(workdir / "base.qcow2", cache_dir=TINY_CACHE / "tiny")
    uuid = str(uuidlib.uuid4())
    cleanup.append(uuid)
    seed = build_nocloud(
        instance_id=f"i-{uuid[:8]}",
        hostname="migrant",
        ssh_keys=[ssh_key.with_suffix(".pub").read_text()],
        user_data=TICKER,
    )
    on_a = _instance(workdir / "a", uuid, base, seed)
    on_b = _instance(workdir / "b", uuid, base, seed)

    a.define(on_a)
    a.start(uuid)
    _wait(lambda: READY_MARKER in _console(on_a), BOOT_TIMEOUT, "the guest to boot", on_a)
    token = secrets.token_hex(8)
    before = _ssh(on_a, ssh_key, f"echo {token} >/root/mark; sync; {_IDENTITY}").split()

    # Too slow: the booted guest's memory (tens of MiB that are not zero pages) capped at
    # 1 MiB/s cannot move within 2 s, so the job is aborted and the guest stays on A.
    with pytest.raises(DriverError) as caught:
        a.migrate_live(
            uuid,
            second_libvirtd.uri,
            dest=dataclasses.replace(on_b, disks=on_a.disks),
            options=MigrationOptions(
                trust_shared_storage=True, migration_uri=LOOPBACK, bandwidth_mib_s=1, timeout=2
            ),
        )
    assert caught.value.code == MIGRATION_TIMEOUT, caught.value
    assert caught.value.details["source_state"] == "running"
    assert (a.state(uuid), b.state(uuid)) == (PowerState.RUNNING, PowerState.MISSING)

    # A -> B: peer-to-peer, disks copied (B holds its own overlay on the same base).
    a.migrate_live(
        uuid,
        second_libvirtd.uri,
        dest=on_b,
        options=MigrationOptions(copy_storage=True, migration_uri=LOOPBACK, timeout=120),
    )
    assert a.state(uuid) is PowerState.MISSING
    assert b.state(uuid) is PowerState.RUNNING
    pid = second_libvirtd.qemu_pid(on_b.name)
    assert pid is not None
    assert f"127.0.0.1:{on_b.port_forwards[0].host_port}-:22" in _cmdline(pid)
    after = _ssh(on_b, ssh_key, f"echo 3 >/proc/sys/vm/drop_caches; cat /root/mark; {_IDENTITY}")
    _assert_same_guest(before, after.split()[1:])
    assert after.split()[0] == token  # read back from B's copy of the disk
    _assert_console_carries_on(on_a, on_b)

    # B -> A: driven by this process over two connections, storage shared (the disk stays
    # in b/, which both daemons see; libvirt cannot know that, hence trust_shared_storage).
    back = dataclasses.replace(
        on_b,
        console_log=workdir / "a" / "console-back.log",
        port_forwards=(PortForward(host_port=_free_port()),),
    )
    b.migrate_live(
        uuid,
        SYSTEM_URI,
        dest=back,
        options=MigrationOptions(
            peer_to_peer=False, trust_shared_storage=True, migration_uri=LOOPBACK, timeout=120
        ),
    )
    assert (a.state(uuid), b.state(uuid)) == (PowerState.RUNNING, PowerState.MISSING)
    again = _ssh(back, ssh_key, f"cat /root/mark; {_IDENTITY}").split()
    assert again[0] == token
    _assert_same_guest(after.split()[1:], again[1:])
    _assert_console_carries_on(on_b, back)


def test_refusals_leave_the_guest_running_on_the_source(
    hosts: tuple[LibvirtComputeDriver, LibvirtComputeDriver],
    second_libvirtd: Daemon,
    workdir: Path,
    cleanup: list[str],
) -> None:
    """A guest with an empty disk (SeaBIOS finds nothing to boot) is enough here."""
    a, b = hosts
    uuid = str(uuidlib.uuid4())
    cleanup.append(uuid)
    disk = workdir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    spec = DomainSpec(
        uuid=uuid,
        name=f"stratus-ftest-{uuid[:8]}",
        vcpus=1,
        memory_mib=64,
        disks=(DiskSpec(path=disk),),
        console_log=workdir / "console.log",
        port_forwards=(PortForward(host_port=_free_port()),),
        tcg_tb_size_mib=32,
    )
    moved = dataclasses.replace(
        spec,
        console_log=workdir / "console-b.log",
        port_forwards=(PortForward(host_port=_free_port()),),
    )
    a.define(spec)
    a.start(uuid)
    shared = MigrationOptions(trust_shared_storage=True, migration_uri=LOOPBACK, timeout=60)
    unreachable = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    attempts: list[tuple[str, MigrationOptions, DomainSpec | None, type[StratusError], set[str]]]
    attempts = [
        # the disk is on a local filesystem and neither copied nor vouched for
        (second_libvirtd.uri, MigrationOptions(migration_uri=LOOPBACK), moved, DriverError,
         {MIGRATION_UNSAFE}),
        (unreachable, shared, moved, HypervisorUnavailable, {MIGRATION_UNREACHABLE}),
        # the system daemon through its socket path: libvirt's host UUID is the same
        ("qemu+unix:///system?socket=/run/libvirt/libvirt-sock", shared, moved, Conflict,
         {MIGRATION_SAME_HOST}),
        # no destination spec: B's QEMU cannot bind the forwarded port A's QEMU holds
        (second_libvirtd.uri, shared, None, DriverError, {MIGRATION_FAILED, MIGRATION_REFUSED}),
    ]  # fmt: skip
    for dest_uri, options, dest, error, codes in attempts:
        with pytest.raises(error) as caught:
            a.migrate_live(uuid, dest_uri, dest=dest, options=options)
        assert caught.value.code in codes, caught.value
        assert a.state(uuid) is PowerState.RUNNING, caught.value
        assert b.state(uuid) is PowerState.MISSING, caught.value
        if caught.value.code in (MIGRATION_FAILED, MIGRATION_REFUSED):
            assert "host forwarding" in caught.value.message
    # and after all that it still moves
    a.migrate_live(uuid, second_libvirtd.uri, dest=moved, options=shared)
    assert (a.state(uuid), b.state(uuid)) == (PowerState.MISSING, PowerState.RUNNING)


# -- helpers ----------------------------------------------------------------------------------

_IDENTITY = "cat /proc/sys/kernel/random/boot_id; cut -d' ' -f1 /proc/uptime"


def _instance(state_dir: Path, uuid: str, base: Path, seed: dict[str, bytes]) -> DomainSpec:
    """One host's copy of the instance: its overlay on ``base``, its seed, its port."""
    state_dir.mkdir(mode=0o755)
    root = state_dir / "root.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(root)],
        check=True,
    )
    write_seed_iso(seed, state_dir / "seed.iso")
    return DomainSpec(
        uuid=uuid,
        name=f"stratus-ftest-{uuid[:8]}",
        vcpus=1,
        memory_mib=max(MIN_MEMORY_MIB, 128),
        disks=(
            DiskSpec(path=root),
            DiskSpec(path=state_dir / "seed.iso", format="raw", target="vdb", readonly=True),
        ),
        console_log=state_dir / "console.log",
        port_forwards=(PortForward(host_port=_free_port()),),
        tcg_tb_size_mib=32,
    )


def _assert_same_guest(before: list[str], after: list[str]) -> None:
    boot_before, uptime_before = before[0], float(before[1])
    boot_after, uptime_after = after[0], float(after[1])
    assert boot_after == boot_before, "the guest rebooted"
    assert uptime_after > uptime_before


def _assert_console_carries_on(source: DomainSpec, dest: DomainSpec) -> None:
    """The destination's console counts on from the source's last tick, without a new boot."""
    last = max(_ticks(source))
    _wait(
        lambda: len([tick for tick in _ticks(dest) if tick > last]) >= 3,
        60,
        "the guest to keep ticking on the destination",
        dest,
    )
    assert min(_ticks(dest)) > last
    assert READY_MARKER not in _console(dest)
    assert "SeaBIOS" not in _console(dest)


def _ticks(spec: DomainSpec) -> list[int]:
    return [int(tick) for tick in TICK_RE.findall(_console(spec))] or [-1]


def _console(spec: DomainSpec) -> str:
    try:
        return spec.console_log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _ssh(spec: DomainSpec, key: Path, command: str) -> str:
    args = [
        "ssh", "-i", str(key), "-p", str(spec.port_forwards[0].host_port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
        "root@127.0.0.1", command,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"ssh failed: {done.stderr}\n{_console(spec)[-2000:]}"
    return done.stdout.strip()


def _wait(check: Callable[[], bool], timeout: float, what: str, spec: DomainSpec) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{_console(spec)[-2000:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _which(tool: str) -> bool:
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()


def _system_or_skip() -> None:
    probe = LibvirtComputeDriver(SYSTEM_URI, hypervisor=Hypervisor.QEMU)
    try:
        probe.capabilities()
    except HypervisorUnavailable as exc:
        pytest.skip(f"{SYSTEM_URI} unavailable: {exc}")
    finally:
        probe.close()


def _wait_for_daemon(daemon: Daemon) -> None:
    """Wait until the second daemon answers; skip (with its output) if it cannot run here."""
    deadline = time.monotonic() + 60
    probe = LibvirtComputeDriver(daemon.uri, hypervisor=Hypervisor.QEMU)
    try:
        while time.monotonic() < deadline:
            if daemon.process.poll() is not None:
                break
            if (daemon.root / "run" / "libvirt-sock").exists():
                try:
                    probe.capabilities()
                    return
                except HypervisorUnavailable:
                    pass
            time.sleep(0.2)
    finally:
        probe.close()
    output = daemon.output.read_text(errors="replace")[-2000:]
    pytest.skip(f"a second libvirtd cannot run beside the system one here: {output}")


def _stop(daemon: Daemon) -> None:
    """Destroy its domains, stop libvirtd, virtlogd and any QEMU left, by PID; remove files."""
    if daemon.process.poll() is None and (daemon.root / "run" / "libvirt-sock").exists():
        driver = LibvirtComputeDriver(daemon.uri, hypervisor=Hypervisor.QEMU)
        try:
            for status in driver.list_domains():
                driver.undefine(status.uuid)
        except StratusError:
            pass
        finally:
            driver.close()
    qemu_pids = [
        int(pidfile.read_text())
        for pidfile in (daemon.root / "run" / "qemu").glob("*.pid")
        if pidfile.read_text().strip().isdigit()
    ]
    daemon.process.terminate()
    try:
        daemon.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        daemon.process.wait()
    virtlogd = daemon.root / "virtlogd.pid"
    if virtlogd.exists() and virtlogd.read_text().strip().isdigit():
        pid = int(virtlogd.read_text())
        if str(daemon.root) in _cmdline(pid):
            _kill(pid, signal.SIGTERM)
    for pid in qemu_pids:
        if "qemu" in _cmdline(pid):
            _kill(pid, signal.SIGKILL)
    shutil.rmtree(daemon.root, ignore_errors=True)
    daemon.output.unlink(missing_ok=True)


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _cmdline(pid):
        time.sleep(0.1)
