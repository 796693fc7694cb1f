"""A recipe whose command fails: the build stops there, shows the output, leaves nothing behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from stratuslab.appliances.builder import build_recipe
from stratuslab.errors import ImageError

pytestmark = [pytest.mark.functional, pytest.mark.slow]

CACHE = Path(os.environ.get("STRATUS_TEST_CACHE", "/var/cache/stratuslab-test")) / "recipes"
RECIPE = """
name: failing-test
version: "1"
packages: [procps]
commands:
  - echo first-command-ran > /root/first
  - "echo marker-from-the-failing-step; ls /no/such/path"
  - echo never-reached
"""


def test_failing_command_stops_the_build_and_leaves_no_image(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("needs root and debootstrap")
    recipe = tmp_path / "failing.yaml"
    recipe.write_text(RECIPE)
    output = tmp_path / "out/failing.qcow2"
    messages: list[str] = []
    with pytest.raises(ImageError) as info:
        build_recipe(recipe, output, cache_dir=CACHE, progress=messages.append)
    error = info.value
    assert error.code == "build_step_failed"
    assert error.details["step"].startswith("command 2: echo marker-from-the-failing-step")
    assert "marker-from-the-failing-step" in error.message
    assert "No such file or directory" in error.message
    assert not any("never-reached" in m or "convert" in m for m in messages)
    assert not output.exists() and not output.with_suffix(".json").exists()
    assert list(CACHE.glob("failing-test-*")) == []
    assert list(CACHE.glob(".failing-test-*.partial-*")) == []
    assert [p for p in (CACHE / "work").iterdir() if p.name.startswith("failing-test")] == []
    assert str(CACHE) not in Path("/proc/self/mountinfo").read_text()
