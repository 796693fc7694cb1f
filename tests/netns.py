"""Network namespaces, veth pairs and small traffic tools for tests, with guaranteed cleanup.

Everything a :class:`NetnsLab` creates lives in namespaces it made itself (named
``slt<pid>x<label>``), so deleting them deletes every interface, bridge, VXLAN device and nft
table inside. Processes started with :meth:`Netns.popen` are killed by PID, and so is any other
process still running inside a lab namespace (e.g. a daemonised dnsmasq) before it is deleted.
Only addresses from 198.18.0.0/15 and fd00:5eed::/48 are meant to be used inside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PREFIX = "slt"
SERVER = r"""
import socket, sys
srv = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(16)
print("listening", flush=True)
while True:
    conn, peer = srv.accept()
    conn.sendall(("hello from %s to %s\n" % (sys.argv[3], peer[0])).encode())
    conn.close()
"""
CLIENT = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        print(s.recv(200).decode().strip())
except OSError as exc:
    print("failed:", exc)
    sys.exit(1)
"""


def require_root_tools(*tools: str) -> None:
    """Skip the test unless running as root with ``ip`` and ``tools`` installed."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [tool for tool in ("ip", *tools) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


@dataclass
class Netns:
    name: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name}: {' '.join(args)} failed: {done.stderr}")
        return done

    def ip(self, *args: str) -> str:
        return self.run(["ip", *args]).stdout

    def popen(self, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.name, *args], **kwargs
        )
        self.processes.append(process)
        return process  # type: ignore[no-any-return]

    def ping(self, address: str, *, count: int = 1, wait: int = 2) -> bool:
        """One ICMP echo (busybox ping) from inside the namespace."""
        cmd = ["busybox", "ping", "-c", str(count), "-W", str(wait), address]
        return self.run(cmd, check=False, timeout=wait * count + 5).returncode == 0

    def serve_tcp(self, address: str, port: int) -> subprocess.Popen[bytes]:
        """A TCP server greeting every client, until the lab ends."""
        process = self.popen(
            [sys.executable, "-c", SERVER, address, str(port), self.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"listening"
        return process

    def tcp_connect(self, address: str, port: int, *, timeout: float = 2.0) -> str | None:
        """The server's greeting, or None when the connection fails."""
        done = self.run(
            [sys.executable, "-c", CLIENT, address, str(port), str(timeout)],
            check=False,
            timeout=timeout + 10,
        )
        return done.stdout.strip() if done.returncode == 0 else None

    def stop_processes(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self.processes.clear()
        for pid in _pids_in(self.name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class NetnsLab:
    """Namespaces and links for one test; :meth:`close` removes all of them."""

    def __init__(self) -> None:
        self.namespaces: list[Netns] = []
        self._state: Path | None = None

    def state_dir(self, label: str) -> Path:
        """A driver state directory other users can search (dnsmasq drops root), removed at
        :meth:`close` (pytest's ``tmp_path`` is private to root, so it will not do)."""
        if self._state is None:
            self._state = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-state-"))
            self._state.chmod(0o755)
        path = self._state / label
        path.mkdir(mode=0o755)
        return path

    def namespace(self, label: str) -> Netns:
        name = f"{PREFIX}{os.getpid()}x{label}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns = Netns(name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A veth pair from ``a`` (``a_if``) to ``b`` (``b_if``), both ends up."""
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.ip("link", "set", a_if, "up")
        b.ip("link", "set", b_if, "up")

    def instance(self, host: Netns, host_if: str, label: str, *, mac: str) -> Netns:
        """An "instance": a namespace whose eth0 is a veth whose other end ``host_if`` is on
        ``host`` (plug it into a bridge with the driver)."""
        ns = self.namespace(label)
        host.ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        ns.ip("link", "set", "eth0", "address", mac)
        ns.ip("link", "set", "eth0", "up")
        return ns

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            ns.stop_processes()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)
        self.namespaces.clear()
        if self._state is not None:
            shutil.rmtree(self._state, ignore_errors=True)
            self._state = None


@contextlib.contextmanager
def netns_lab() -> Iterator[NetnsLab]:
    sweep_stale()
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.close()


def sweep_stale() -> None:
    """Delete lab namespaces left by test processes that no longer exist (e.g. killed runs)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        owner = name.removeprefix(PREFIX).partition("x")[0]
        if not name.startswith(PREFIX) or not owner.isdigit() or os.path.exists(f"/proc/{owner}"):
            continue
        for pid in _pids_in(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _pids_in(netns: str) -> list[int]:
    done = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in done.stdout.split() if pid.isdigit() and int(pid) != os.getpid()]
