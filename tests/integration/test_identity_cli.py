"""``stratus login|whoami|token|project|user|quota|usage|audit`` against the real app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from stratuslab.cli.context import AppContext
from stratuslab.cli.main import cli
from stratuslab.client import StratusClient
from stratuslab.config import ClientSettings, ControllerSettings, read_toml

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> ControllerSettings:
    return ControllerSettings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        argon2_memory_kib=1024,
        argon2_time_cost=1,
        argon2_parallelism=1,
    )


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, admin_token: str) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(
        'cloud = "test"\n\n[clouds.test]\nendpoint = "http://testserver"\n'
        f'token = "{admin_token}"\n'
    )
    monkeypatch.setenv("STRATUS_CONFIG", str(path))
    for name in ("STRATUS_TOKEN", "STRATUS_ENDPOINT", "STRATUS_CLOUD"):
        monkeypatch.delenv(name, raising=False)
    return path


def run(app_client: TestClient, *args: str, stdin: str | None = None) -> Result:
    def factory(settings: ClientSettings) -> StratusClient:
        return StratusClient(settings.endpoint, settings.token, http=app_client)

    app = AppContext(client_factory=factory, width=200)
    return CliRunner().invoke(cli, list(args), obj=app, input=stdin, catch_exceptions=False)


def test_admin_makes_a_project_and_a_user_who_logs_in(app_client: TestClient, config: Path) -> None:
    assert run(app_client, "project", "create", "physics", "--max-lifetime", "7d").exit_code == 0
    made = run(
        app_client,
        "user",
        "create",
        "jane",
        "--project",
        "physics",
        "--password",
        stdin="a long passphrase\na long passphrase\n",
    )
    assert made.exit_code == 0, made.output
    assert "physics:member" in made.stdout
    added = run(app_client, "project", "add", "physics", "jane", "--role", "admin")
    assert added.exit_code == 0, added.output
    out = run(app_client, "quota", "set", "physics", "vcpus=40", "instances=-1", "--json")
    assert json.loads(out.stdout)["limits"]["vcpus"] == 40
    # jane logs in: the token lands in her config file
    login = run(app_client, "login", "-u", "jane", "--password-stdin", stdin="a long passphrase\n")
    assert login.exit_code == 0, login.output
    saved = read_toml(config)["clouds"]["test"]
    assert saved["token"].startswith("stl_")
    me = run(app_client, "whoami", "--json")
    assert json.loads(me.stdout)["user"] == "jane"
    shown = run(app_client, "quota", "show")
    assert "vcpus" in shown.stdout
    assert "40" in shown.stdout
    token = run(app_client, "token", "create", "--scope", "compute:read", "--expires-in", "1d")
    assert token.exit_code == 0, token.output
    assert token.stdout.startswith("stl_")
    listed = json.loads(run(app_client, "token", "list", "--json").stdout)
    assert len(listed) == 2
    ro = next(t for t in listed if t["scopes"] == ["compute:read"])
    assert run(app_client, "token", "revoke", ro["token_id"]).exit_code == 0
    usage = run(app_client, "usage", "--format", "csv")
    assert usage.exit_code == 0
    denied = run(app_client, "audit")
    assert denied.exit_code == 5
    assert "cloud admin" in denied.stderr
    assert run(app_client, "logout").exit_code == 0
    assert "token" not in read_toml(config)["clouds"]["test"]


def test_wrong_password_exit_code_and_message(app_client: TestClient, config: Path) -> None:
    result = run(app_client, "login", "-u", "nobody", "--password-stdin", stdin="whatever!\n")
    assert result.exit_code == 5
    assert "wrong user name or password" in result.stderr


def test_admin_views(app_client: TestClient, config: Path, admin_token: Any) -> None:
    assert "admin" in run(app_client, "user", "list").stdout
    assert run(app_client, "project", "members", "admin").exit_code == 0
    audit = run(app_client, "audit")
    assert audit.exit_code == 0
    linked = run(app_client, "user", "link", "admin", "--dn", "/DC=org/CN=Admin")
    assert linked.exit_code == 0, linked.output
    assert "/DC=org/CN=Admin" in run(app_client, "user", "identities", "admin").stdout
