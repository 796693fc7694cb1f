"""Detached daemons recorded in pid files (used by ``stratus up`` and ``stratus down``).

A pid file is trusted only while ``/proc/PID/cmdline`` still names the program we started, so
a recycled PID is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stratuslab.errors import StratusError

STOP_SECONDS = 10.0
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Daemon:
    """One background program: its name, pid file and log file."""

    program: str
    pid_file: Path
    log_file: Path

    def recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """The recorded PID if that process is alive and is still our program."""
        pid = self.recorded_pid()
        if pid is not None and is_program(pid, self.program):
            return pid
        return None

    def start(self, argv: Sequence[str]) -> int:
        """Start ``argv`` in its own session, output appended to the log; record the PID."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log, 1),
            (os.POSIX_SPAWN_DUP2, log, 2),
        ]
        try:
            pid = os.posix_spawn(
                argv[0], list(argv), dict(os.environ), file_actions=actions, setsid=True
            )
        except OSError as exc:
            raise StratusError(
                f"cannot start {argv[0]}: {exc.strerror}",
                hint="is StratusLab installed in this environment (pip install stratuslab)?",
                code="spawn_failed",
            ) from exc
        finally:
            os.close(log)
        _settle(pid)
        self.pid_file.write_text(f"{pid}\n")
        return pid

    def stop(self, timeout: float = STOP_SECONDS) -> str:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns what happened, for humans."""
        pid = self.running_pid()
        stale = pid is None and self.pid_file.exists()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return "was not running (stale pid file removed)" if stale else "was not running"
        _signal(pid, signal.SIGTERM)
        if wait_gone(pid, self.program, timeout):
            return f"stopped (pid {pid})"
        _signal(pid, signal.SIGKILL)
        wait_gone(pid, self.program, timeout)
        return f"killed (pid {pid}) after {timeout:g} s"

    def log_tail(self, lines: int = 20) -> str:
        try:
            content = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(content[-lines:])


def is_program(pid: int, program: str) -> bool:
    """Whether ``pid`` is alive (not a zombie) and its command line names ``program``."""
    reap(pid)
    if _state(pid) in (None, "Z", "X"):
        return False
    return program in _cmdline(pid)


def _state(pid: int) -> str | None:
    """The one-letter state in ``/proc/PID/stat`` (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _settle(pid: int, timeout: float = 2.0) -> None:
    """Wait until a just-spawned child shows its new command line.

    ``posix_spawn`` returns while the kernel is still in ``execve``, when
    ``/proc/PID/cmdline`` is briefly empty.
    """
    deadline = time.monotonic() + timeout
    while not _cmdline(pid) and _state(pid) not in (None, "Z", "X"):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.001)


def wait_gone(pid: int, program: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_program(pid, program):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child (else it would linger as a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
