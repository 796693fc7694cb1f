"""The client and the CLI against an in-memory fake of the REST API (``fakeapi.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from click.testing import CliRunner, Result

from stratuslab.cli.context import AppContext
from stratuslab.cli.main import cli
from stratuslab.client import OperationTimeout, StratusClient
from stratuslab.config import ClientSettings
from stratuslab.errors import (
    CapacityError,
    NotFound,
    ServiceUnavailable,
    StratusError,
    Unauthorized,
)
from tests.integration.fakeapi import ENDPOINT, TOKEN, FakeCloud

Invoke = Callable[..., Result]


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAAkey user@test\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("STRATUS_CONFIG", str(home / ".config" / "stratuslab" / "config.toml"))
    monkeypatch.setenv("STRATUS_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("STRATUS_TOKEN", TOKEN)
    for name in ("STRATUS_CLOUD", "STRATUS_TIMEOUT", "STRATUS_DEBUG", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def app(cloud: FakeCloud, home: Path) -> AppContext:
    def factory(settings: ClientSettings) -> StratusClient:
        return StratusClient(settings.endpoint, settings.token, transport=cloud.transport())

    return AppContext(client_factory=factory, sleep=lambda _s: None)


@pytest.fixture
def invoke(app: AppContext) -> Invoke:
    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), obj=app, catch_exceptions=False)

    return run


def run_vm(invoke: Invoke, cloud: FakeCloud, *extra: str) -> list[dict[str, Any]]:
    if not cloud.images:
        cloud.add_image("debian")
    result = invoke("--json", "run", "debian", *extra)
    assert result.exit_code == 0, result.output
    created: list[dict[str, Any]] = json.loads(result.stdout)
    return created


# -- client --------------------------------------------------------------------------------


def test_client_returns_schema_objects(cloud: FakeCloud) -> None:
    with cloud.client() as client:
        assert client.health()["status"] == "ok"
        assert {f.name for f in client.list_flavors()} == {"small", "medium"}
        assert client.list_hosts()[0].state == "enabled"


def test_client_follows_pages(cloud: FakeCloud) -> None:
    cloud.add_image("debian")
    with cloud.client() as client:
        from stratuslab.schemas.instances import InstanceCreate

        client.create_instances(InstanceCreate(image="debian", name="vm", count=5))
        assert len(client.list_instances(limit=2).items) == 2
        assert len(list(client.iter_instances(page_size=2))) == 5


def test_client_maps_error_envelope(cloud: FakeCloud) -> None:
    with cloud.client() as client, pytest.raises(NotFound) as info:
        client.get_instance("nope")
    assert info.value.hint.startswith("list them")
    with cloud.client(token="wrong") as client, pytest.raises(Unauthorized):
        client.list_flavors()


def test_client_maps_plain_404_and_unreachable() -> None:
    plain = httpx.MockTransport(lambda _r: httpx.Response(404, json={"detail": "Not Found"}))
    with StratusClient(ENDPOINT, transport=plain) as client, pytest.raises(NotFound):
        client.get_host("h")

    def refuse(request: httpx.Request) -> NoReturn:
        raise httpx.ConnectError("connection refused", request=request)

    refused = httpx.MockTransport(refuse)
    with (
        StratusClient(ENDPOINT, transport=refused) as client,
        pytest.raises(ServiceUnavailable) as info,
    ):
        client.health()
    assert "stratus up" in info.value.hint


def test_client_wait_operation_reports_progress_and_failure(cloud: FakeCloud) -> None:
    cloud.add_image("debian")
    cloud.steps = 3
    seen: list[str] = []
    with cloud.client() as client:
        from stratuslab.schemas.instances import InstanceCreate

        created = client.create_instances(InstanceCreate(image="debian"))
        done = client.wait_operation(
            created.operation.id, 10, on_progress=lambda op: seen.append(op.progress)
        )
        assert done.status == "succeeded"
        assert seen == ["step 1", "step 2", "done"]
        cloud.fail_next = {"code": "no_capacity", "message": "no host fits", "hint": "smaller"}
        failing = client.create_instances(InstanceCreate(image="debian"))
        with pytest.raises(CapacityError, match="no host fits"):
            client.wait_operation(failing.operation.id, 10)


def test_client_wait_operation_times_out(cloud: FakeCloud) -> None:
    cloud.add_image("debian")
    cloud.steps = 1000
    with cloud.client() as client:
        from stratuslab.schemas.instances import InstanceCreate

        created = client.create_instances(InstanceCreate(image="debian"))
        with pytest.raises(OperationTimeout):
            client.wait_operation(created.operation.id, 0)


def test_client_streams_upload(cloud: FakeCloud, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"x" * (3 * 1024 * 1024 + 5))
    counted: list[int] = []
    with cloud.client() as client:
        image = client.upload_image(disk, "disk", on_bytes=counted.append)
    assert image.size_bytes == disk.stat().st_size
    assert sum(counted) == disk.stat().st_size
    assert len(counted) == 4
    assert cloud.requests[-1].headers["Content-Length"] == str(disk.stat().st_size)


# -- instances -----------------------------------------------------------------------------


def test_run_waits_and_prints_table(invoke: Invoke, cloud: FakeCloud) -> None:
    cloud.add_image("debian")
    result = invoke("run", "debian", "--name", "web")
    assert result.exit_code == 0, result.output
    assert "web" in result.stdout
    assert "running" in result.stdout
    assert "127.0.0.1:22001" in result.stdout
    assert "node-1" in result.stdout
    [post] = [r for r in cloud.requests if r.method == "POST"]
    body = json.loads(post.content)
    assert body["ssh_keys"] == ["ssh-ed25519 AAAAkey user@test"]


def test_run_json_has_full_ids(invoke: Invoke, cloud: FakeCloud) -> None:
    created = run_vm(invoke, cloud, "-n", "2", "--name", "w")
    assert [i["name"] for i in created] == ["w-1", "w-2"]
    assert set(cloud.instances) == {i["id"] for i in created}
    assert all(i["status"] == "running" for i in created)


def test_run_failed_operation_exits_with_its_code(invoke: Invoke, cloud: FakeCloud) -> None:
    cloud.add_image("debian")
    cloud.fail_next = {
        "code": "no_capacity",
        "message": "no host has 1 free vCPUs",
        "hint": "try a smaller flavor",
        "details": {},
    }
    result = invoke("run", "debian")
    assert result.exit_code == 6
    assert "Error: no host has 1 free vCPUs" in result.stderr
    assert "Hint: try a smaller flavor" in result.stderr
    assert "failed" in result.stdout


def test_run_no_wait_and_bad_name(invoke: Invoke, cloud: FakeCloud) -> None:
    cloud.add_image("debian")
    result = invoke("-q", "run", "debian", "--no-wait")
    assert result.exit_code == 0
    assert result.stdout.strip() in cloud.instances
    assert not any("/operations/" in r.url.path for r in cloud.requests)
    bad = invoke("run", "debian", "--name", "bad_name!")
    assert bad.exit_code == 2
    assert "invalid input" in bad.stderr


def test_list_table_json_and_quiet(invoke: Invoke, cloud: FakeCloud) -> None:
    created = run_vm(invoke, cloud, "--name", "alpha")
    full_id = created[0]["id"]
    table = invoke("list")
    assert table.exit_code == 0
    header = table.stdout.splitlines()[0].split()
    assert header == ["ID", "NAME", "STATUS", "FLAVOR", "VCPUS", "MEMORY", "ADDRESS", "HOST"]
    assert full_id[:8] in table.stdout
    assert full_id not in table.stdout
    assert "512 MiB" in table.stdout
    listed = json.loads(invoke("list", "--json").stdout)
    assert [i["id"] for i in listed] == [full_id]
    assert invoke("-q", "list").stdout.split() == [full_id]


def test_show_includes_events(invoke: Invoke, cloud: FakeCloud) -> None:
    run_vm(invoke, cloud, "--name", "alpha")
    result = invoke("show", "alpha")
    assert result.exit_code == 0
    assert "flavor_name" in result.stdout
    assert "instance.running" in result.stdout
    data = json.loads(invoke("--json", "show", "alpha").stdout)
    assert data["name"] == "alpha"
    assert [e["kind"] for e in data["events"]] == ["instance.created", "instance.running"]


def test_not_found_exit_code_message_and_hint(invoke: Invoke) -> None:
    result = invoke("show", "nope")
    assert result.exit_code == 3
    assert "Error: instance 'nope' not found" in result.stderr
    assert "Hint: list them" in result.stderr
    assert result.stdout == ""


def test_bad_token_exit_code(invoke: Invoke) -> None:
    result = invoke("--token", "wrong", "list")
    assert result.exit_code == 5
    assert "invalid or missing token" in result.stderr


def test_unreachable_controller(home: Path) -> None:
    def refuse(request: httpx.Request) -> NoReturn:
        raise httpx.ConnectError("connection refused", request=request)

    app = AppContext(
        client_factory=lambda s: StratusClient(s.endpoint, transport=httpx.MockTransport(refuse))
    )
    result = CliRunner().invoke(cli, ["list"], obj=app)
    assert result.exit_code == 9
    assert "stratus up" in result.stderr


def test_unexpected_exception_exits_1(home: Path) -> None:
    def boom(_settings: ClientSettings) -> StratusClient:
        raise RuntimeError("kaboom")

    result = CliRunner().invoke(cli, ["list"], obj=AppContext(client_factory=boom))
    assert result.exit_code == 1
    assert "RuntimeError: kaboom" in result.stderr
    assert "Traceback" not in result.output


def test_stop_start_reboot(invoke: Invoke, cloud: FakeCloud) -> None:
    [vm] = run_vm(invoke, cloud, "--name", "alpha")
    assert invoke("stop", "alpha").stdout == "stopped: alpha\n"
    assert cloud.instances[vm["id"]].status == "stopped"
    assert invoke("start", "alpha").exit_code == 0
    assert cloud.instances[vm["id"]].status == "running"
    result = invoke("reboot", "--hard", "alpha", "--no-wait")
    assert result.stdout == "rebooting: alpha\n"
    action = json.loads(cloud.requests[-1].content)
    assert action == {"action": "reboot", "hard": True}


def test_kill_goes_on_after_an_error(invoke: Invoke, cloud: FakeCloud) -> None:
    run_vm(invoke, cloud, "-n", "2", "--name", "w")
    result = invoke("kill", "w-1", "missing", "w-2")
    assert result.exit_code == 3
    assert "deleted: w-1" in result.stdout
    assert "deleted: w-2" in result.stdout
    assert "instance 'missing' not found" in result.stderr
    assert cloud.instances == {}


def test_console_and_follow(invoke: Invoke, cloud: FakeCloud, app: AppContext) -> None:
    [vm] = run_vm(invoke, cloud, "--name", "alpha")
    assert invoke("console", "alpha").stdout == "booting alpha\nlogin: "
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 1:
            cloud.consoles[vm["id"]] += "root\n"
            return
        raise KeyboardInterrupt

    app.sleep = sleep
    result = invoke("console", "--follow", "alpha")
    assert result.exit_code == 0
    assert result.stdout == "booting alpha\nlogin: root\n"
    assert calls == [0.5, 0.5]


def test_ssh_execs_with_port(invoke: Invoke, cloud: FakeCloud, app: AppContext) -> None:
    run_vm(invoke, cloud, "--name", "alpha")
    seen: list[Sequence[str]] = []

    def fake_exec(file: str, args: Sequence[str]) -> NoReturn:
        seen.append([file, *args])
        raise SystemExit(0)

    app.exec_fn = fake_exec
    result = invoke("ssh", "alpha", "-i", __file__, "--", "uname", "-a")
    assert result.exit_code == 0
    assert seen == [
        [
            "ssh",
            "ssh",
            "-p",
            "22001",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-i",
            __file__,
            "root@127.0.0.1",
            "uname",
            "-a",
        ]
    ]


def test_ssh_without_address_is_a_conflict(invoke: Invoke, cloud: FakeCloud) -> None:
    cloud.add_image("debian")
    assert invoke("run", "debian", "--name", "alpha", "--no-wait").exit_code == 0
    result = invoke("ssh", "alpha")
    assert result.exit_code == 4
    assert "has no SSH address yet" in result.stderr


# -- events --------------------------------------------------------------------------------


def test_events_table_filter_and_follow(invoke: Invoke, cloud: FakeCloud, app: AppContext) -> None:
    run_vm(invoke, cloud, "--name", "alpha")
    cloud.add_event("host.enabled", "node-1 enabled")
    table = invoke("events")
    assert table.exit_code == 0
    assert "node-1 enabled" in table.stdout
    only = json.loads(invoke("events", "alpha", "--json").stdout)
    assert [e["kind"] for e in only] == ["instance.created", "instance.running"]
    assert [e["id"] for e in json.loads(invoke("--json", "events", "--tail", "1").stdout)] == [3]

    def sleep(_seconds: float) -> None:
        if len(cloud.events) == 3:
            cloud.add_event("host.disabled", "node-1 disabled")
            return
        raise KeyboardInterrupt

    app.sleep = sleep
    followed = invoke("events", "--follow", "--tail", "1")
    lines = followed.stdout.splitlines()
    assert len(lines) == 2
    assert "node-1 enabled" in lines[0]
    assert "node-1 disabled" in lines[1]


# -- images, flavors, hosts ----------------------------------------------------------------


def test_image_add_list_show_delete(invoke: Invoke, cloud: FakeCloud, tmp_path: Path) -> None:
    disk = tmp_path / "debian-12.qcow2"
    disk.write_bytes(b"QFI\xfb" + b"\0" * 2048)
    added = invoke("image", "add", str(disk))
    assert added.exit_code == 0, added.output
    assert "debian-12" in added.stdout
    [image] = cloud.images.values()
    assert cloud.uploads[image.id] == disk.read_bytes()
    assert "2.0 KiB" in invoke("image", "list").stdout
    assert json.loads(invoke("image", "show", "debian-12", "--json").stdout)["id"] == image.id
    assert invoke("image", "delete", "debian-12").exit_code == 0
    assert cloud.images == {}
    assert invoke("image", "delete", "debian-12").exit_code == 3


def test_flavor_commands(invoke: Invoke, cloud: FakeCloud) -> None:
    listed = invoke("flavor", "list")
    assert "2 GiB" in listed.stdout
    created = invoke("flavor", "create", "large", "--vcpus", "4", "--memory", "8192")
    assert created.exit_code == 0
    assert cloud.flavors["large"].memory_mib == 8192
    assert invoke("flavor", "create", "large", "--vcpus", "4", "--memory", "64").exit_code == 4
    assert invoke("flavor", "delete", "large").exit_code == 0
    assert "large" not in cloud.flavors


def test_host_commands_and_join_token(invoke: Invoke, cloud: FakeCloud) -> None:
    listed = invoke("host", "list")
    assert listed.exit_code == 0
    assert "node-1" in listed.stdout
    assert "0/8" in listed.stdout
    assert json.loads(invoke("host", "show", "node-1", "--json").stdout)["name"] == "node-1"
    token = invoke("admin", "host", "token", "--ttl", "60")
    assert token.exit_code == 0
    assert token.stdout.startswith("join-")
    assert "stratus-node --join" in token.stderr
    assert cloud.requests[-1].url.params["ttl"] == "60"


# -- the real controller app (in-process, SQLite; no node) ---------------------------------


@pytest.fixture
def real_client(app_client: Any, admin_token: str) -> StratusClient:
    return StratusClient("http://testserver", admin_token, http=app_client)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_client_speaks_the_real_api(
    real_client: StratusClient, app_client: Any, qcow2_file: Path
) -> None:
    from stratuslab.schemas.agent import HostCapacity, JoinRequest
    from stratuslab.schemas.flavors import FlavorCreate
    from stratuslab.schemas.instances import InstanceCreate

    assert real_client.health()["status"] == "ok"
    assert real_client.list_flavors()
    real_client.create_flavor(FlavorCreate(name="tiny2", vcpus=1, memory_mib=128))
    real_client.delete_flavor("tiny2")
    image = real_client.upload_image(qcow2_file, "disk")
    assert real_client.get_image("disk").id == image.id
    with pytest.raises(StratusError) as info:
        real_client.create_instances(InstanceCreate(image="disk", name="vm"))
    # NB a CapacityError with its own code comes back as a Conflict (see the report)
    assert info.value.code == "no_hosts"
    join = JoinRequest(
        token=real_client.create_join_token(60).token,
        capacity=HostCapacity(
            hostname="n1", arch="x86_64", vcpus=4, memory_mib=4096, disk_gib=10, hypervisor="qemu"
        ),
    )
    assert app_client.post("/api/v1/agent/join", json=join.model_dump()).status_code == 201
    assert [h.name for h in real_client.list_hosts()] == ["n1"]
    assert real_client.get_host("n1").vcpus == 4
    created = real_client.create_instances(InstanceCreate(image="disk", name="vm"))
    op = real_client.get_operation(created.operation.id)
    assert op.id == created.operation.id
    assert real_client.list_instances().total == 1
    assert real_client.get_instance("vm").id == created.instances[0].id
    assert real_client.console("vm").offset == 0
    assert real_client.instance_action("vm", "stop").kind
    assert real_client.delete_instance("vm").kind
    assert isinstance(real_client.list_events(), list)
    with pytest.raises(NotFound):
        real_client.get_instance("nope")
    with pytest.raises(NotFound):
        real_client.get_host("nope")
