"""``stratus up`` / ``stratus down``: a whole cloud (controller + one node) on this machine.

Everything lives in the data directory::

    controller.pid controller.log   the ``stratus-controller serve`` daemon
    node.pid node.log               the ``stratus-node`` daemon
    admin.token                     written by ``stratus-controller init`` (mode 0600)
    endpoint                        the URL the controller was started on
    node/credential.json            written by the node once it has joined

Each step is skipped when already done, so ``up`` also repairs a half-running cloud.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.processes import Daemon
from stratuslab.client import StratusClient
from stratuslab.config import DEFAULT_PORT, default_data_dir, save_cloud, user_config_path
from stratuslab.errors import InvalidInput, StratusError
from stratuslab.schemas.hosts import Host

CLOUD_NAME = "local"
HEALTH_SECONDS = 30.0
HOST_SECONDS = 60.0
INIT_SECONDS = 300.0
DELETE_SECONDS = 300.0
JOIN_TOKEN_TTL = 600.0
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class LocalCloud:
    """The files of an all-in-one cloud in ``data_dir`` and the programs it runs."""

    data_dir: Path
    bin_dir: Path

    @property
    def controller(self) -> Daemon:
        d = self.data_dir
        return Daemon("stratus-controller", d / "controller.pid", d / "controller.log")

    @property
    def node(self) -> Daemon:
        return Daemon("stratus-node", self.data_dir / "node.pid", self.data_dir / "node.log")

    @property
    def node_dir(self) -> Path:
        return self.data_dir / "node"

    def program(self, name: str) -> str:
        return str(self.bin_dir / name)

    def admin_token(self) -> str:
        path = self.data_dir / "admin.token"
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise StratusError(
                f"cannot read the admin token in {path}: {exc.strerror}",
                hint="run `stratus down` and then `stratus up` again",
                code="missing_admin_token",
            ) from exc

    def endpoint(self, port: int) -> str:
        try:
            return (self.data_dir / "endpoint").read_text().strip()
        except OSError:
            return f"http://127.0.0.1:{port}"


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the database, logs and pid files live.  [default: ~/.local/share/stratuslab, "
    "or /var/lib/stratuslab for root]",
)


@click.command()
@data_dir_option
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--database-url", default="", help="SQLAlchemy URL (default: SQLite in the data dir)."
)
@json_option
@pass_app
def up(app: AppContext, data_dir: Path | None, port: int, database_url: str) -> None:
    """Start a cloud on this machine: a controller and one node (resumes a partial one)."""
    local = LocalCloud((data_dir or default_data_dir()).resolve(), app.bin_dir)
    # 0711: QEMU (user libvirt-qemu) must traverse it to reach disks; secrets inside are 0600.
    local.data_dir.mkdir(parents=True, exist_ok=True)
    local.data_dir.chmod(0o711)
    started, endpoint, admin_token, join_token = _ensure_controller(app, local, port, database_url)
    with app.client_for(endpoint, admin_token) as client:
        _wait_healthy(app, local, client)
        if not started and local.node.running_pid() is not None:
            output.info(app, f"StratusLab is already running at {endpoint} ({local.data_dir})")
            _summary(app, local, endpoint, _first_enabled(client.list_hosts()))
            return
        if local.node.running_pid() is None:
            _start_node(app, local, client, join_token)
        host = _wait_host(app, local, client)
    save_cloud(user_config_path(), CLOUD_NAME, {"endpoint": endpoint, "token": admin_token})
    output.info(app, f"saved cloud {CLOUD_NAME!r} in {user_config_path()} and selected it")
    _summary(app, local, endpoint, host)


@click.command()
@data_dir_option
@click.option(
    "--purge",
    is_flag=True,
    help="Delete every instance first, then remove the data directory.",
)
@pass_app
def down(app: AppContext, data_dir: Path | None, purge: bool) -> None:
    """Stop the local cloud started by `stratus up` (node first, then controller)."""
    local = LocalCloud((data_dir or default_data_dir()).resolve(), app.bin_dir)
    if purge:
        _check_purgeable(local.data_dir)
        _delete_instances(app, local)
    for name, daemon in (("node", local.node), ("controller", local.controller)):
        output.info(app, f"{name}: {daemon.stop()}")
    if purge:
        shutil.rmtree(local.data_dir)
        output.info(app, f"removed {local.data_dir}")


COMMANDS = (up, down)


# -- up steps ------------------------------------------------------------------------------


def _ensure_controller(
    app: AppContext, local: LocalCloud, port: int, database_url: str
) -> tuple[bool, str, str, str]:
    """Start the controller unless it runs: (started, endpoint, admin token, join token)."""
    if local.controller.running_pid() is not None:
        return False, local.endpoint(port), local.admin_token(), ""
    db_args = ["--database-url", database_url] if database_url else []
    admin_token, join_token = _init(local, db_args)
    endpoint = f"http://127.0.0.1:{port}"
    output.info(app, f"starting the controller on {endpoint}")
    argv = [local.program("stratus-controller"), "serve", "--data-dir", str(local.data_dir)]
    local.controller.start([*argv, "--host", "127.0.0.1", "--port", str(port), *db_args])
    (local.data_dir / "endpoint").write_text(endpoint + "\n")
    return True, endpoint, admin_token, join_token


def _init(local: LocalCloud, db_args: list[str]) -> tuple[str, str]:
    """Run ``stratus-controller init``: migrate, bootstrap; returns (admin, join) tokens."""
    argv = [local.program("stratus-controller"), "init", "--data-dir", str(local.data_dir)]
    try:
        done = subprocess.run(
            [*argv, *db_args], capture_output=True, text=True, timeout=INIT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StratusError(
            f"cannot run {argv[0]} init: {exc}",
            hint="is StratusLab installed in this environment?",
            code="init_failed",
        ) from exc
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise StratusError(
            f"stratus-controller init failed (exit {done.returncode})",
            hint=tail or "run the command by hand to see why",
            code="init_failed",
        )
    tokens = json.loads(lines[-1])
    return str(tokens["admin_token"]), str(tokens.get("join_token", ""))


def _start_node(app: AppContext, local: LocalCloud, client: StratusClient, token: str) -> None:
    argv = [local.program("stratus-node")]
    if not (local.node_dir / "credential.json").exists():
        token = token or client.create_join_token(JOIN_TOKEN_TTL).token
        argv += ["--join", client.endpoint, token]
    output.info(app, "starting the node agent")
    local.node.start([*argv, "--state-dir", str(local.node_dir)])


def _wait_healthy(app: AppContext, local: LocalCloud, client: StratusClient) -> None:
    def healthy() -> bool:
        try:
            client.health()
        except StratusError:
            return False
        return True

    _wait_for(app, healthy, local.controller, HEALTH_SECONDS, "the controller to answer")


def _wait_host(app: AppContext, local: LocalCloud, client: StratusClient) -> Host:
    found: list[Host] = []

    def enabled() -> bool:
        host = _first_enabled(client.list_hosts())
        found[:] = [host] if host is not None else []
        return bool(found)

    _wait_for(app, enabled, local.node, HOST_SECONDS, "the node to join")
    return found[0]


def _wait_for(
    app: AppContext, ready: Callable[[], bool], daemon: Daemon, timeout: float, what: str
) -> None:
    """Poll ``ready`` until true; fail early if ``daemon`` dies, with its log tail."""
    deadline = time.monotonic() + timeout
    while not ready():
        alive = daemon.running_pid() is not None
        if not alive or time.monotonic() >= deadline:
            reason = "exited" if not alive else f"did not get ready in {timeout:g} s"
            tail = daemon.log_tail()
            raise StratusError(
                f"{daemon.program} {reason} while waiting for {what}; "
                f"last lines of {daemon.log_file}:\n{tail or '(empty)'}",
                hint=f"see {daemon.log_file}; `stratus down` then `stratus up` tries again",
                code="start_failed",
            )
        app.sleep(POLL_SECONDS)


def _first_enabled(hosts: list[Host]) -> Host | None:
    return next((h for h in hosts if h.state == "enabled"), None)


def _summary(app: AppContext, local: LocalCloud, endpoint: str, host: Host | None) -> None:
    facts = {
        "endpoint": endpoint,
        "data_dir": str(local.data_dir),
        "host": host.name if host else "",
        "hypervisor": host.hypervisor if host else "",
    }
    if app.json:
        output.print_json(facts)
    elif not app.quiet:
        output.print_fields(app, ((k.replace("_", " "), output.text(v)) for k, v in facts.items()))
        output.info(app, "next: `stratus image add FILE --name NAME`, then `stratus run NAME`")


# -- down steps ----------------------------------------------------------------------------

DATA_DIR_MARKERS = ("controller.pid", "controller.log", "admin.token", "endpoint", "node")


def _check_purgeable(data_dir: Path) -> None:
    """Refuse to remove a directory that does not look like one ``stratus up`` made."""
    if not data_dir.is_dir():
        return
    if data_dir in (Path("/"), Path.home()) or not any(
        (data_dir / marker).exists() for marker in DATA_DIR_MARKERS
    ):
        raise InvalidInput(
            f"{data_dir} does not look like a StratusLab data directory; not removing it",
            hint="pass the --data-dir that `stratus up` used",
        )


def _delete_instances(app: AppContext, local: LocalCloud) -> None:
    if local.controller.running_pid() is None:
        output.info(app, "the controller is not running: no instance was deleted")
        return
    failures = output.Failures()
    with app.client_for(local.endpoint(DEFAULT_PORT), local.admin_token()) as client:
        for instance in list(client.iter_instances()):
            if instance.status == "deleted":
                continue
            with failures.item():
                operation = client.delete_instance(instance.id)
                client.wait_operation(operation.id, DELETE_SECONDS)
                output.info(app, f"deleted instance {instance.name}")
