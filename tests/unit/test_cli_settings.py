"""Where the CLI's endpoint and token come from: flag > STRATUS_* env > config file > default."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from stratuslab.cli.context import AppContext
from stratuslab.cli.main import cli
from stratuslab.client import StratusClient
from stratuslab.config import ClientSettings, load_client_settings, save_cloud


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("STRATUS_CONFIG", str(path))
    for name in ("STRATUS_ENDPOINT", "STRATUS_TOKEN", "STRATUS_CLOUD", "STRATUS_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    save_cloud(path, "lab", {"endpoint": "http://file:1", "token": "file-token"})
    save_cloud(path, "other", {"endpoint": "http://other:2", "token": "other-token"}, select=False)
    return path


def settings_seen(*args: str) -> tuple[Result, list[ClientSettings]]:
    seen: list[ClientSettings] = []

    def factory(settings: ClientSettings) -> StratusClient:
        seen.append(settings)
        transport = httpx.MockTransport(lambda _r: httpx.Response(200, json=[]))
        return StratusClient(settings.endpoint, settings.token, transport=transport)

    result = CliRunner().invoke(cli, [*args, "flavor", "list"], obj=AppContext(factory))
    return result, seen


def test_file_is_used_without_flags_or_env(config: Path) -> None:
    result, [settings] = settings_seen()
    assert result.exit_code == 0, result.output
    assert (settings.endpoint, settings.token, settings.cloud) == (
        "http://file:1",
        "file-token",
        "lab",
    )


def test_env_beats_file(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATUS_ENDPOINT", "http://env:3")
    _result, [settings] = settings_seen()
    assert (settings.endpoint, settings.token) == ("http://env:3", "file-token")


def test_flag_beats_env(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATUS_ENDPOINT", "http://env:3")
    monkeypatch.setenv("STRATUS_TOKEN", "env-token")
    _result, [settings] = settings_seen("--endpoint", "http://flag:4")
    assert (settings.endpoint, settings.token) == ("http://flag:4", "env-token")
    _result, [settings] = settings_seen("--token", "flag-token")
    assert settings.token == "flag-token"


def test_cloud_flag_selects_a_section(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATUS_CLOUD", "lab")
    _result, [settings] = settings_seen("--cloud", "other")
    assert (settings.endpoint, settings.cloud) == ("http://other:2", "other")


def test_unknown_cloud_is_invalid_input(config: Path) -> None:
    result, seen = settings_seen("--cloud", "nowhere")
    assert result.exit_code == 2
    assert "cloud 'nowhere' is not defined" in result.stderr
    assert "lab, other" in result.stderr
    assert seen == []


def test_help_needs_no_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is [not toml")
    monkeypatch.setenv("STRATUS_CONFIG", str(bad))
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "run" in result.stdout
    assert CliRunner().invoke(cli, ["list"]).exit_code == 2


def test_save_cloud_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    save_cloud(path, "local", {"endpoint": "http://127.0.0.1:8770", "token": 'a"b\\c'})
    save_cloud(path, "site", {"endpoint": "https://cloud.example", "token": "t2"}, select=False)
    env: dict[str, str] = {}
    settings = load_client_settings(config_file=path, environ=env)
    assert (settings.cloud, settings.endpoint, settings.token) == (
        "local",
        "http://127.0.0.1:8770",
        'a"b\\c',
    )
    site = load_client_settings(config_file=path, environ=env, overrides={"cloud": "site"})
    assert site.endpoint == "https://cloud.example"
    assert path.stat().st_mode & 0o777 == 0o600
    save_cloud(path, "local", {"endpoint": "http://127.0.0.1:9000", "token": "new"})
    again = load_client_settings(config_file=path, environ=env)
    assert (again.endpoint, again.token) == ("http://127.0.0.1:9000", "new")
    assert (
        load_client_settings(config_file=path, environ=env, overrides={"cloud": "site"}).token
        == "t2"
    )
