"""``stratus volume ...`` and ``stratus run --volume/--volatile-disk`` through the real app
and an in-process agent (the fixtures of test_volumes.py)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from stratuslab.cli.context import AppContext
from stratuslab.cli.main import cli
from stratuslab.client import StratusClient
from stratuslab.config import ClientSettings
from tests.integration.test_volumes import Node, image, node  # noqa: F401 (fixtures)


@pytest.fixture
def stratus(api: TestClient, node: Node) -> Any:  # noqa: F811
    """Run a CLI command while a background thread keeps the agent converging."""

    def factory(_settings: ClientSettings) -> StratusClient:
        return StratusClient("http://testserver", http=api)

    def invoke(*args: str) -> Any:
        stop = threading.Event()

        def agent() -> None:
            while not stop.is_set():
                node.agent.step(wait=0)
                stop.wait(0.05)

        worker = threading.Thread(target=agent, daemon=True)
        worker.start()
        try:
            app = AppContext(client_factory=factory, sleep=lambda _s: None)
            return CliRunner().invoke(cli, ["--json", *args], obj=app)
        finally:
            stop.set()
            worker.join()

    return invoke


def test_volume_commands(stratus: Any, image: dict) -> None:  # noqa: F811
    made = stratus("volume", "create", "data", "--size", "1")
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["state"] == "available"
    assert stratus("run", "base", "--name", "vm", "--volatile-disk", "1").exit_code == 0
    assert stratus("volume", "attach", "data", "vm").exit_code == 0
    shown = json.loads(stratus("volume", "show", "data").output)
    assert shown["state"] == "in-use" and shown["attachments"][0]["target"] == "vdd"
    refused = stratus("volume", "delete", "data")
    assert refused.exit_code != 0 and "in-use" in refused.output
    assert stratus("volume", "snapshot", "data", "snap").exit_code == 0
    assert stratus("volume", "detach", "data").exit_code == 0
    assert stratus("volume", "grow", "data", "2").exit_code == 0
    assert stratus("volume", "clone", "snap", "copy").exit_code == 0
    assert stratus("volume", "update", "copy", "--visibility", "project").exit_code == 0
    names = {v["name"]: v for v in json.loads(stratus("volume", "list").output)}
    assert set(names) == {"data", "snap", "copy", "vm-volatile-1"}
    assert names["data"]["size_bytes"] == 2 << 30 and names["snap"]["readonly"]
    assert stratus("volume", "delete", "copy").exit_code == 0
    quarantined = json.loads(stratus("volume", "quarantine", "list").output)
    assert [v["name"] for v in quarantined] == ["copy"]
    assert stratus("volume", "quarantine", "purge", quarantined[0]["id"]).exit_code == 0
    assert json.loads(stratus("volume", "quarantine", "list").output) == []


def test_volume_create_from_instance(stratus: Any, image: dict) -> None:  # noqa: F811
    assert stratus("run", "base", "--name", "vm").exit_code == 0
    both = stratus("volume", "create", "x", "--from-instance", "vm", "--image", "base")
    assert both.exit_code == 2 and "not both" in both.output
    running = stratus("volume", "create", "x", "--from-instance", "vm")
    assert running.exit_code != 0 and "stopped" in running.output
    assert stratus("stop", "vm").exit_code == 0
    made = stratus("volume", "create", "saved", "--from-instance", "vm")
    assert made.exit_code == 0, made.output
    saved = json.loads(made.output)
    assert (saved["kind"], saved["state"], saved["name"]) == ("bootable", "available", "saved")
