"""The real controller, run as its own process on loopback (``stratus-controller``'s code).

The simulation starts it exactly as an operator would (``init`` then ``serve``), so every
number it reports includes HTTP, JSON, the services and the database. It can be killed and
started again on the same database to measure recovery.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

_ENTRY = "from stratuslab.api.server import main; main()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ControllerProcess:
    """One controller process; :meth:`restart` replaces it on the same database and port."""

    data_dir: Path
    database_url: str
    port: int = field(default_factory=free_port)
    #: extra controller settings, as STRATUS_* environment variables (name -> value)
    settings: dict[str, str] = field(default_factory=dict)
    #: run under the sampling profiler (sim/sampler.py), dumping into this directory
    profile_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    admin_token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the controller is not running"
        return self.proc.pid

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["STRATUS_CONTROLLER_CONFIG"] = str(self.data_dir / "controller.toml")  # none: defaults
        env.update({f"STRATUS_{k.upper()}": v for k, v in self.settings.items()})
        return env

    def _args(self, command: str) -> list[str]:
        entry = _ENTRY
        if self.profile_dir is not None and command == "serve":
            entry = f"from stratuslab.sim.sampler import main; main({str(self.profile_dir)!r})"
        return [
            sys.executable,
            "-c",
            entry,
            command,
            "--data-dir",
            str(self.data_dir),
            "--database-url",
            self.database_url,
        ]

    def init(self) -> str:
        """Migrate the database and create the admin; return the admin API token."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            self._args("init"), env=self._env(), capture_output=True, check=False, timeout=300
        )
        if out.returncode != 0:
            raise RuntimeError(f"controller init failed: {out.stderr.decode()[-2000:]}")
        self.admin_token = str(
            json.loads(out.stdout.decode().strip().splitlines()[-1])["admin_token"]
        )
        return self.admin_token

    def start(self, *, timeout: float = 60.0) -> float:
        """Start serving; return the seconds until /health answered."""
        t0 = time.monotonic()
        log = (self.data_dir / "controller.log").open("ab")
        args = [*self._args("serve"), "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(args, env=self._env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the controller exited; see {self.data_dir / 'controller.log'}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1.0).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the controller did not answer within {timeout:.0f} s")

    def stop(self, *, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` s (long-polls would hold a graceful stop)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> float:
        self.stop(grace=0.5)
        return self.start()

    def dump_profile(self) -> None:
        """Ask the profiled controller to write the samples since the last dump."""
        if self.profile_dir is not None and self.proc is not None:
            self.proc.send_signal(signal.SIGUSR1)

    def memory(self) -> tuple[int, int]:
        """(current RSS, peak RSS) in bytes."""
        values = {"VmRSS": 0, "VmHWM": 0}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) * 1024
        return values["VmRSS"], values["VmHWM"]

    def cpu_seconds(self) -> float:
        """User + system CPU time the controller process has used."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
