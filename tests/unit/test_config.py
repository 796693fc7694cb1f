from __future__ import annotations

from pathlib import Path

import pytest

from stratuslab.config import (
    ControllerSettings,
    load_controller_settings,
    load_node_settings,
)
from stratuslab.errors import InvalidInput


def test_controller_layers_file_env_arguments(tmp_path: Path) -> None:
    cfg = tmp_path / "controller.toml"
    cfg.write_text('port = 9000\nstop_timeout = 5\ndatabase_url = "sqlite:///x.db"\n')
    env = {"STRATUS_PORT": "9100"}
    s = load_controller_settings(config_file=cfg, environ=env, overrides={"stop_timeout": 7})
    assert (s.port, s.stop_timeout, s.database_url) == (9100, 7.0, "sqlite:///x.db")


def test_unknown_setting_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "controller.toml"
    cfg.write_text("prot = 9000\n")
    with pytest.raises(InvalidInput, match="prot") as caught:
        load_controller_settings(config_file=cfg, environ={})
    assert "port" in caught.value.hint


def test_bad_value_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="port"):
        load_controller_settings(config_file=tmp_path / "none", environ={"STRATUS_PORT": "x"})


def test_broken_toml_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("port = = 1\n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_controller_settings(config_file=cfg, environ={})


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    s = ControllerSettings(data_dir=tmp_path)
    assert s.effective_database_url == f"sqlite:///{tmp_path}/controller.db"


def test_node_env_prefix(tmp_path: Path) -> None:
    s = load_node_settings(
        config_file=tmp_path / "none",
        environ={"STRATUS_NODE_DRIVER": "fake", "STRATUS_DRIVER": "ignored"},
    )
    assert s.driver == "fake"
