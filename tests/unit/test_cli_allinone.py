"""``stratus up`` / ``stratus down`` with fake programs standing in for the controller and node.

The fakes are small Python scripts named ``stratus-controller`` and ``stratus-node`` in a
temporary bin dir (so ``/proc/PID/cmdline`` names them like the real ones); the REST API is an
``httpx.MockTransport``. Every process a test starts is ended by the test, by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from stratuslab.cli import processes
from stratuslab.cli.allinone import LocalCloud
from stratuslab.cli.context import AppContext
from stratuslab.cli.main import cli
from stratuslab.client import StratusClient
from stratuslab.config import ClientSettings, load_client_settings

PORT = 18770
ENDPOINT = f"http://127.0.0.1:{PORT}"

FAKE_CONTROLLER = """
import json, os, pathlib, sys, time
args = sys.argv[1:]
data = pathlib.Path(args[args.index("--data-dir") + 1])
with (data / "controller-calls.log").open("a") as log:
    log.write(" ".join(args) + "\\n")
if args[0] == "init":
    if os.environ.get("FAKE_INIT_FAIL"):
        print("database is locked", file=sys.stderr)
        sys.exit(3)
    (data / "admin.token").write_text("admin-tok\\n")
    print("migrating", file=sys.stderr)
    print(json.dumps({"admin_token": "admin-tok", "join_token": "join-tok"}))
    sys.exit(0)
print("serving", flush=True)
if os.environ.get("FAKE_SERVE_CRASH"):
    print("address already in use", flush=True)
    sys.exit(1)
time.sleep(300)
"""

FAKE_NODE = """
import os, pathlib, signal, sys, time
args = sys.argv[1:]
state = pathlib.Path(args[args.index("--state-dir") + 1])
state.mkdir(parents=True, exist_ok=True)
with (state.parent / "node-calls.log").open("a") as log:
    log.write(" ".join(args) + "\\n")
if "--join" in args and not os.environ.get("FAKE_NODE_NO_CREDENTIAL"):
    (state / "credential.json").write_text("{}")
if os.environ.get("FAKE_NODE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("node running", flush=True)
time.sleep(300)
"""


@dataclass
class FakeApi:
    """Just enough of the API for up/down: health, hosts, join tokens, instance deletion."""

    healthy: bool = True
    hosts: list[dict[str, object]] = field(default_factory=list)
    instances: list[dict[str, object]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    seen: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path.removeprefix("/api/v1")
        if not self.healthy:
            raise httpx.ConnectError("connection refused", request=request)
        if path == "/health":
            return httpx.Response(200, json={"status": "ok", "version": "test"})
        if request.headers.get("Authorization") != "Bearer admin-tok":
            return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "no"}})
        if path == "/hosts":
            return httpx.Response(200, json=self.hosts)
        if path == "/hosts/tokens":
            self.tokens.append(f"join-from-api-{len(self.tokens)}")
            expires = datetime.now(UTC).isoformat()
            return httpx.Response(201, json={"token": self.tokens[-1], "expires_at": expires})
        if path == "/instances" and request.method == "GET":
            page = {"items": self.instances, "total": len(self.instances), "limit": 100}
            return httpx.Response(200, json={**page, "offset": 0})
        if path.startswith("/instances/") and request.method == "DELETE":
            self.instances = [i for i in self.instances if i["id"] != path.split("/")[-1]]
            return httpx.Response(202, json=operation("running"))
        if path.startswith("/operations/"):
            return httpx.Response(200, json=operation("succeeded"))
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})


def operation(status: str) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": "op1",
        "kind": "instance.delete",
        "status": status,
        "target_type": "instance",
        "target_ids": ["i1"],
        "error": None,
        "progress": "",
        "created_at": now,
        "finished_at": None,
    }


def host(state: str = "enabled") -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": "h1",
        "name": "node-1",
        "state": state,
        "hypervisor": "qemu",
        "arch": "x86_64",
        "vcpus": 2,
        "memory_mib": 2048,
        "disk_gib": 10,
        "usage": {},
        "last_heartbeat": now,
        "agent_version": "test",
        "created_at": now,
    }


def instance(ident: str) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": ident,
        "name": f"vm-{ident}",
        "image_id": "img",
        "flavor_name": "small",
        "vcpus": 1,
        "memory_mib": 512,
        "desired": "running",
        "status": "running",
        "status_reason": "",
        "host_id": "h1",
        "ssh_port": 22001,
        "generation": 1,
        "observed_generation": 1,
        "owner_id": "u",
        "project_id": "p",
        "created_at": now,
        "updated_at": now,
        "started_at": now,
    }


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    for name, body in (("stratus-controller", FAKE_CONTROLLER), ("stratus-node", FAKE_NODE)):
        script = path / name
        script.write_text(f"#!{sys.executable}\n{body}")
        script.chmod(0o755)
    return path


@pytest.fixture
def data_dir(tmp_path: Path, bin_dir: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    local = LocalCloud(path, bin_dir)
    for daemon in (local.node, local.controller):
        pid = daemon.running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            processes.wait_gone(pid, daemon.program, 5)


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    for name in ("STRATUS_CONFIG", "STRATUS_CLOUD", "STRATUS_ENDPOINT", "STRATUS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return FakeApi(hosts=[host()])


def stratus(api: FakeApi, bin_dir: Path, *args: str) -> Result:
    def factory(settings: ClientSettings) -> StratusClient:
        assert settings.endpoint == ENDPOINT
        transport = httpx.MockTransport(api.handle)
        return StratusClient(settings.endpoint, settings.token, transport=transport)

    app = AppContext(client_factory=factory, bin_dir=bin_dir, sleep=lambda _s: time.sleep(0.01))
    return CliRunner().invoke(cli, list(args), obj=app, catch_exceptions=False)


def up(api: FakeApi, bin_dir: Path, data_dir: Path, *extra: str) -> Result:
    return stratus(api, bin_dir, "up", "--data-dir", str(data_dir), "--port", str(PORT), *extra)


def calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_calls(path: Path, count: int) -> list[str]:
    """The calls a spawned fake logged, once there are ``count`` (they start asynchronously)."""
    deadline = time.monotonic() + 10
    while len(calls(path)) < count:
        assert time.monotonic() < deadline, f"{path}: {calls(path)}"
        time.sleep(0.02)
    return calls(path)


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_up_starts_both_saves_the_cloud_and_down_stops_both(
    api: FakeApi, bin_dir: Path, data_dir: Path
) -> None:
    result = up(api, bin_dir, data_dir)
    assert result.exit_code == 0, result.output
    local = LocalCloud(data_dir, bin_dir)
    controller_pid = local.controller.running_pid()
    node_pid = local.node.running_pid()
    assert controller_pid is not None
    assert node_pid is not None
    assert wait_calls(data_dir / "controller-calls.log", 2) == [
        f"init --data-dir {data_dir}",
        f"serve --data-dir {data_dir} --host 127.0.0.1 --port {PORT}",
    ]
    assert wait_calls(data_dir / "node-calls.log", 1) == [
        f"--join {ENDPOINT} join-tok --state-dir {data_dir / 'node'}"
    ]
    settings = load_client_settings()
    assert (settings.cloud, settings.endpoint, settings.token) == ("local", ENDPOINT, "admin-tok")
    assert "node-1" in result.stdout
    assert "qemu" in result.stdout

    down = stratus(api, bin_dir, "down", "--data-dir", str(data_dir))
    assert down.exit_code == 0, down.output
    assert f"node: stopped (pid {node_pid})" in down.stderr
    assert f"controller: stopped (pid {controller_pid})" in down.stderr
    assert not local.controller.pid_file.exists()
    assert not local.node.pid_file.exists()
    assert not processes.is_program(controller_pid, "stratus-controller")
    assert not processes.is_program(node_pid, "stratus-node")
    assert "was not running" in stratus(api, bin_dir, "down", "--data-dir", str(data_dir)).stderr


def test_up_twice_says_already_running(api: FakeApi, bin_dir: Path, data_dir: Path) -> None:
    assert up(api, bin_dir, data_dir).exit_code == 0
    wait_calls(data_dir / "controller-calls.log", 2)
    again = up(api, bin_dir, data_dir)
    assert again.exit_code == 0
    assert "already running" in again.stderr
    assert len(calls(data_dir / "controller-calls.log")) == 2


def test_up_restarts_only_the_node_reusing_its_credential(
    api: FakeApi, bin_dir: Path, data_dir: Path
) -> None:
    assert up(api, bin_dir, data_dir).exit_code == 0
    local = LocalCloud(data_dir, bin_dir)
    controller_pid = local.controller.running_pid()
    wait_for(data_dir / "node" / "credential.json")
    assert local.node.stop().startswith("stopped")
    result = up(api, bin_dir, data_dir)
    assert result.exit_code == 0, result.output
    assert local.controller.running_pid() == controller_pid
    assert local.node.running_pid() is not None
    node_calls = wait_calls(data_dir / "node-calls.log", 2)
    assert node_calls[1] == f"--state-dir {data_dir / 'node'}"
    assert len(calls(data_dir / "controller-calls.log")) == 2


def test_up_gets_a_new_join_token_for_a_node_that_never_joined(
    api: FakeApi, bin_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NODE_NO_CREDENTIAL", "1")
    assert up(api, bin_dir, data_dir).exit_code == 0
    wait_calls(data_dir / "node-calls.log", 1)
    LocalCloud(data_dir, bin_dir).node.stop()
    assert up(api, bin_dir, data_dir).exit_code == 0
    assert api.tokens == ["join-from-api-0"]
    node_calls = wait_calls(data_dir / "node-calls.log", 2)
    assert node_calls[1].startswith(f"--join {ENDPOINT} join-from-api-0 ")


def test_controller_that_dies_shows_its_log(
    api: FakeApi, bin_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SERVE_CRASH", "1")
    api.healthy = False
    result = up(api, bin_dir, data_dir)
    assert result.exit_code == 1
    assert "stratus-controller exited" in result.stderr, result.stderr
    assert "address already in use" in result.stderr, result.stderr
    assert "Hint:" in result.stderr


def test_init_failure_shows_its_stderr(
    api: FakeApi, bin_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_INIT_FAIL", "1")
    result = up(api, bin_dir, data_dir)
    assert result.exit_code == 1
    assert "stratus-controller init failed (exit 3)" in result.stderr
    assert "database is locked" in result.stderr
    assert not (data_dir / "controller.pid").exists()


def test_node_that_never_enables_times_out(
    api: FakeApi, bin_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stratuslab.cli.allinone.HOST_SECONDS", 0.2)
    api.hosts = [host("offline")]
    result = up(api, bin_dir, data_dir)
    assert result.exit_code == 1
    assert "stratus-node did not get ready in 0.2 s" in result.stderr


def test_missing_programs_are_reported(api: FakeApi, tmp_path: Path, data_dir: Path) -> None:
    result = up(api, tmp_path / "nowhere", data_dir)
    assert result.exit_code == 1
    assert "cannot run" in result.stderr


def test_down_never_signals_a_foreign_process(api: FakeApi, bin_dir: Path, data_dir: Path) -> None:
    data_dir.mkdir()
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (data_dir / "controller.pid").write_text(f"{stranger.pid}\n")
        (data_dir / "node.pid").write_text("not a pid\n")
        result = stratus(api, bin_dir, "down", "--data-dir", str(data_dir))
        assert result.exit_code == 0
        assert "stale pid file removed" in result.stderr
        assert stranger.poll() is None
        assert not (data_dir / "controller.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_escalates_to_sigkill(
    api: FakeApi, bin_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NODE_IGNORE_TERM", "1")
    data_dir.mkdir()
    node = LocalCloud(data_dir, bin_dir).node
    pid = node.start([str(bin_dir / "stratus-node"), "--state-dir", str(data_dir / "node")])
    wait_for(data_dir / "node-calls.log")
    time.sleep(0.2)  # let it install its SIGTERM handler
    assert node.stop(timeout=0.3) == f"killed (pid {pid}) after 0.3 s"
    assert not processes.is_program(pid, "stratus-node")


def test_down_purge_deletes_instances_and_the_data_dir(
    api: FakeApi, bin_dir: Path, data_dir: Path
) -> None:
    assert up(api, bin_dir, data_dir).exit_code == 0
    api.instances = [instance("i1"), instance("i2")]
    result = stratus(api, bin_dir, "down", "--data-dir", str(data_dir), "--purge")
    assert result.exit_code == 0, result.output
    assert api.instances == []
    assert "deleted instance vm-i1" in result.stderr
    assert not data_dir.exists()


def test_purge_refuses_a_foreign_directory(api: FakeApi, bin_dir: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    result = stratus(api, bin_dir, "down", "--data-dir", str(precious), "--purge")
    assert result.exit_code == 2
    assert (precious / "thesis.tex").exists()


def test_json_summary(api: FakeApi, bin_dir: Path, data_dir: Path) -> None:
    result = up(api, bin_dir, data_dir, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {
        "endpoint": ENDPOINT,
        "data_dir": str(data_dir.resolve()),
        "host": "node-1",
        "hypervisor": "qemu",
    }
