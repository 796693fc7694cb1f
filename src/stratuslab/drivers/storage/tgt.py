"""The user-space iSCSI target ``tgtd`` (Debian package ``tgt``): ``tgtadm`` and a private daemon.

:class:`Tgtadm` drives one ``tgtd`` through its management socket (``-C`` picks which daemon
when several run). :class:`TgtDaemon` starts a private ``tgtd`` listening on one address and
port, for tests, benchmarks and one-host clouds; a site runs the distribution's service.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from stratuslab.drivers.storage.files import run
from stratuslab.errors import DriverError

#: Where tgtd keeps its management sockets (``socket.<control port>``).
SOCKET_DIR = Path("/run/tgtd")
#: ``tgtd -C`` accepts control ports up to this.
MAX_CONTROL_PORT = 32767
_TARGET_RE = re.compile(r"^Target (\d+): (\S+)$")


@dataclass
class Target:
    """One target as ``tgtadm --op show`` lists it."""

    tid: int
    iqn: str
    luns: dict[int, str] = field(default_factory=dict)  # LUN -> backing store path
    acl: list[str] = field(default_factory=list)  # initiator addresses (or ALL)
    sessions: list[str] = field(default_factory=list)  # initiators' IP addresses


class Tgtadm:
    """``tgtadm`` for the iSCSI driver of the ``tgtd`` on ``control_port`` (None: default)."""

    def __init__(self, control_port: int | None = None, *, tgtadm: str = "tgtadm") -> None:
        self.control_port = control_port
        self.tgtadm = tgtadm

    def targets(self) -> dict[str, Target]:
        """Every target of the daemon, by IQN."""
        return {t.iqn: t for t in parse_show(self._call("show targets", "target", "show"))}

    def new_target(self, tid: int, iqn: str) -> None:
        self._call(f"create target {iqn}", "target", "new", "--tid", str(tid), "--targetname", iqn)

    def new_lun(self, tid: int, lun: int, path: Path, *, readonly: bool) -> None:
        args = ["--tid", str(tid), "--lun", str(lun), "--backing-store", str(path)]
        self._call(f"add LUN {lun} ({path}) to target {tid}", "logicalunit", "new", *args)
        if readonly:
            flags = ["--tid", str(tid), "--lun", str(lun), "--params", "readonly=1"]
            self._call(f"make LUN {lun} of target {tid} read-only", "logicalunit", "update", *flags)

    def bind(self, tid: int, address: str) -> None:
        flags = ["--tid", str(tid), "--initiator-address", address]
        self._call(f"allow {address} on target {tid}", "target", "bind", *flags)

    def unbind(self, tid: int, address: str) -> None:
        flags = ["--tid", str(tid), "--initiator-address", address]
        self._call(f"disallow {address} on target {tid}", "target", "unbind", *flags)

    def delete_target(self, tid: int, *, force: bool = False) -> None:
        flags = ["--force"] if force else []
        self._call(f"delete target {tid}", "target", "delete", *flags, "--tid", str(tid))

    def shutdown(self) -> None:
        """Ask the daemon to exit."""
        control = [] if self.control_port is None else ["-C", str(self.control_port)]
        run([self.tgtadm, *control, "--mode", "system", "--op", "delete"], what="stop tgtd")

    def ready(self) -> bool:
        """True if the daemon answers on its management socket."""
        try:
            self._call("query tgtd", "sys", "show")
        except DriverError:
            return False
        return True

    def _call(self, what: str, mode: str, op: str, *args: str) -> str:
        control = [] if self.control_port is None else ["-C", str(self.control_port)]
        command = [self.tgtadm, *control, "--lld", "iscsi", "--mode", mode, "--op", op, *args]
        return run(command, what=what)


def parse_show(text: str) -> list[Target]:
    """The targets in ``tgtadm --mode target --op show`` output."""
    targets: list[Target] = []
    section, lun = "", None
    for raw in text.splitlines():
        line = raw.strip()
        match = _TARGET_RE.match(raw)
        if match is not None:
            targets.append(Target(int(match.group(1)), match.group(2)))
            section, lun = "", None
        elif not targets or not line:
            continue
        elif line.endswith("information:"):
            section = line.removesuffix(" information:")
        elif section == "I_T nexus" and line.startswith("IP Address:"):
            targets[-1].sessions.append(line.split(":", 1)[1].strip())
        elif section == "LUN" and line.startswith("LUN:"):
            lun = int(line.split(":", 1)[1])
        elif section == "LUN" and line.startswith("Backing store path:") and lun is not None:
            targets[-1].luns[lun] = line.split(":", 1)[1].strip()
        elif section == "ACL":
            targets[-1].acl.append(line)
    return targets


class TgtDaemon:
    """A private ``tgtd`` serving iSCSI on ``portal_host:portal_port`` only.

    Use it as a context manager, or :meth:`start` and :meth:`stop`, which asks it to exit
    (``tgtd`` ignores SIGTERM) and kills it by PID if it has not within ``timeout``.
    """

    def __init__(
        self,
        *,
        portal_port: int,
        control_port: int,
        portal_host: str = "127.0.0.1",
        log: Path | None = None,
        tgtd: str = "tgtd",
    ) -> None:
        self.portal_host, self.portal_port = portal_host, portal_port
        self.control_port = control_port
        self.log = log
        self.tgtd = tgtd
        self.tgtadm = Tgtadm(control_port)
        self._process: subprocess.Popen[bytes] | None = None
        #: a daemon started by another process (:meth:`adopt`): stopped by PID
        self._adopted: int | None = None

    @property
    def pid(self) -> int | None:
        return self._adopted if self._process is None else self._process.pid

    @classmethod
    def adopt(cls, pid: int, *, control_port: int, tgtd: str = "tgtd") -> TgtDaemon | None:
        """The running ``tgtd`` ``pid`` serving ``control_port`` (started by an earlier
        process, e.g. a node agent before it restarted), or None if ``pid`` is not that."""
        argv = _cmdline(pid)
        if not argv or Path(argv[0]).name != Path(tgtd).name:
            return None
        if _option(argv, "-C") != str(control_port):
            return None
        daemon = cls(portal_port=0, control_port=control_port, tgtd=tgtd)
        daemon._adopted = pid
        return daemon

    def start(self, timeout: float = 10.0, *, detach: bool = False) -> None:
        """Start the daemon and wait until it serves. ``detach``: in its own session and
        not as a :class:`subprocess.Popen` child, so that it outlives the caller (guests
        keep their disks while a node agent restarts); it is stopped by PID."""
        portal = f"portal={self.portal_host}:{self.portal_port}"
        program = shutil.which(self.tgtd)
        if program is None:
            raise DriverError(
                f"cannot start {self.tgtd}: it is not installed", hint="apt-get install tgt"
            )
        args = [program, "-f", "-C", str(self.control_port), "--iscsi", portal]
        log = Path("/dev/null") if self.log is None else self.log
        with log.open("ab") as out:
            if detach:
                actions = [
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                    (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
                ]
                self._adopted = os.posix_spawn(
                    program, args, dict(os.environ), file_actions=actions, setsid=True
                )
            else:
                self._process = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=out
                )
        deadline = time.monotonic() + timeout
        while not (self.tgtadm.ready() and self._listening()):
            if self._exited() or time.monotonic() > deadline:
                self.stop()
                raise DriverError(
                    f"tgtd did not start on {self.portal_host}:{self.portal_port}",
                    hint=f"see {self.log}" if self.log else "is the port or control port in use?",
                )
            time.sleep(0.05)

    def _exited(self) -> bool:
        if self._process is not None:
            return self._process.poll() is not None
        return self._adopted is None or _gone(self._adopted, 0)

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        adopted, self._adopted = self._adopted, None
        if process is None and adopted is None:
            return
        if process is not None and process.poll() is not None:
            return
        if adopted is not None and not self.adopt(
            adopted, control_port=self.control_port, tgtd=self.tgtd
        ):
            return  # gone, or the PID is someone else's now
        # tgtd ignores SIGTERM; it exits when asked through its management socket, once it
        # has no targets left.
        with contextlib.suppress(DriverError):
            for target in self.tgtadm.targets().values():
                self.tgtadm.delete_target(target.tid, force=True)
            self.tgtadm.shutdown()
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        elif adopted is not None and not _gone(adopted, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(adopted, signal.SIGKILL)
            _gone(adopted, timeout)
        for suffix in ("", ".lock"):  # tgtd leaves its management socket behind
            (SOCKET_DIR / f"socket.{self.control_port}{suffix}").unlink(missing_ok=True)

    def __enter__(self) -> TgtDaemon:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.portal_host, self.portal_port), timeout=0.5):
                return True
        except OSError:
            return False


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _option(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[i + 1]
    return None


def _gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (reaped if it is our child; a zombie of someone else's
    counts as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
