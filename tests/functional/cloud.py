"""A real all-in-one cloud for functional tests: controller and node agent as processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from stratuslab.client import StratusClient

BIN = Path(sys.executable).parent
TINY_CACHE = Path(os.environ.get("STRATUS_TEST_CACHE", "/var/cache/stratuslab-test"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Cloud:
    """Controller + one agent with their own data directory, port and SSH port range."""

    def __init__(self, root: Path, *, ssh_port_base: int) -> None:
        self.root = root
        self.data = root / "controller"
        self.state = root / "node"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "STRATUS_SSH_PORT_BASE": str(ssh_port_base),
            "STRATUS_SSH_PORT_COUNT": "50",
            "STRATUS_STOP_TIMEOUT": "20",
            "STRATUS_CONTROLLER_CONFIG": str(root / "none.toml"),
            "STRATUS_NODE_CONFIG": str(root / "none.toml"),
        }
        self.controller: subprocess.Popen[bytes] | None = None
        self.node: subprocess.Popen[bytes] | None = None
        out = subprocess.run(
            [BIN / "stratus-controller", "init", "--data-dir", str(self.data)],
            check=True,
            capture_output=True,
            text=True,
            env=self.env,
        ).stdout
        tokens = json.loads(out.strip().splitlines()[-1])
        self.admin_token: str = tokens["admin_token"]
        self.join_token: str = tokens["join_token"]
        self.client = StratusClient(self.url, self.admin_token, timeout=60)

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.root / log).open("ab") as fh:
            return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=self.env)

    def start_controller(self) -> None:
        self.controller = self._spawn(
            [
                str(BIN / "stratus-controller"),
                "serve",
                "--data-dir",
                str(self.data),
                "--port",
                str(self.port),
            ],
            "controller.log",
        )
        wait_for(self._healthy, 30, "the controller to answer")

    def _healthy(self) -> bool:
        try:
            self.client.health()
        except Exception:
            return False
        return True

    def start_node(self) -> None:
        args = [str(BIN / "stratus-node"), "--state-dir", str(self.state)]
        if not (self.state / "credential.json").exists():
            args += ["--join", self.url, self.join_token]
        self.node = self._spawn(args, "node.log")

    def kill(self, which: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """End the process (SIGKILL: a crash; SIGTERM: a clean stop)."""
        proc: subprocess.Popen[bytes] | None = getattr(self, which)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
        if proc is not None:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        setattr(self, which, None)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def console(self, ref: str) -> str:
        return self.client.console(ref).data

    def close(self) -> None:
        try:
            if self.controller is not None and self.node is not None:
                for inst in self.client.iter_instances():
                    op = self.client.delete_instance(inst.id)
                    self.client.wait_operation(op.id, timeout=60)
        finally:
            self.client.close()
            self.kill("node", signal.SIGTERM)
            self.kill("controller", signal.SIGTERM)
            _undefine_leftovers(self.state)


def _undefine_leftovers(state: Path) -> None:
    """Safety net: remove any domain whose instance directory this test's node still has."""
    instances = state / "instances"
    if not instances.exists():
        return
    for d in instances.iterdir():
        name = f"stratus-{d.name}"
        for cmd in ("destroy", "undefine"):
            subprocess.run(
                ["virsh", "-c", "qemu:///system", cmd, name],
                capture_output=True,
                check=False,
            )
