"""The recipe builder without building: tiny delegation, cache reuse, metadata, the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stratuslab.appliances import builder, tiny
from stratuslab.appliances.builder import BuildResult, build_recipe
from stratuslab.appliances.recipe import DebootstrapRecipe, parse_recipe, resolve_recipe
from stratuslab.errors import InvalidInput

RECIPE = 'name: mini\nversion: "2"\ndescription: a test\n'


def _fake_tiny(output: Path, *, cache_dir: Path, size_mib: int, progress: object) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(b"tiny image " + str(size_mib).encode())
    return output


def test_tiny_recipe_delegates_and_writes_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny, "build_tiny", _fake_tiny)
    result = build_recipe(resolve_recipe("tiny"), tmp_path / "out/tiny.qcow2", cache_dir=tmp_path)
    assert result.image.read_bytes() == b"tiny image 256"
    assert result.metadata_path == tmp_path / "out/tiny.json"
    meta = json.loads(result.metadata_path.read_text())
    assert meta == result.metadata
    assert (meta["name"], meta["version"], meta["builder"], meta["arch"]) == (
        "tiny",
        "1",
        "tiny",
        "amd64",
    )
    assert meta["sha256"] == hashlib.sha256(b"tiny image 256").hexdigest()
    assert meta["size"] == len(b"tiny image 256")
    assert meta["created"].endswith("Z")
    assert len(meta["recipe_sha256"]) == 64


def test_cached_image_is_reused_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = tmp_path / "mini.yaml"
    recipe.write_text(RECIPE)
    spec = parse_recipe(RECIPE)
    assert isinstance(spec, DebootstrapRecipe)
    monkeypatch.setattr(builder.disk, "check_tools", lambda tools, what: None)
    monkeypatch.setattr(builder, "suite_fingerprint", lambda mirror, suite: "release-1")
    monkeypatch.setattr(builder.aptsources, "apt_mirror", lambda suite: "http://mirror.test")
    key = builder.cache_key(spec, mirror="http://mirror.test", fingerprint="release-1")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"mini-{key[:16]}.qcow2").write_bytes(b"cached")
    (cache / f"mini-{key[:16]}.json").write_text(json.dumps({"name": "mini", "sha256": "x"}))

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not build")

    monkeypatch.setattr(builder, "_build_image", no_build)
    messages: list[str] = []
    result = build_recipe(
        recipe, tmp_path / "o/mini.qcow2", cache_dir=cache, progress=messages.append
    )
    assert result == BuildResult(
        image=tmp_path / "o/mini.qcow2",
        metadata_path=tmp_path / "o/mini.json",
        metadata={"name": "mini", "sha256": "x"},
        cached=True,
    )
    assert result.image.read_bytes() == b"cached"
    assert messages[-1] == f"reusing cached image mini-{key[:16]}.qcow2"


def test_a_bad_recipe_fails_before_anything_runs(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE + "comands: [true]\n")
    with pytest.raises(InvalidInput, match="unknown key 'comands'"):
        build_recipe(recipe, tmp_path / "out.qcow2", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out.qcow2").exists()
    assert not (tmp_path / "cache").exists()


def test_suite_fingerprint_reads_release_files(tmp_path: Path) -> None:
    dists = tmp_path / "dists/bookworm"
    dists.mkdir(parents=True)
    (dists / "Release").write_bytes(b"Suite: stable\n")
    expected = hashlib.sha256(b"Suite: stable\n").hexdigest()
    assert builder.suite_fingerprint(f"file://{tmp_path}", "bookworm") == expected
    from stratuslab.errors import DriverError

    with pytest.raises(DriverError, match="cannot read the release file of trixie"):
        builder.suite_fingerprint(f"file://{tmp_path}", "trixie")


def test_cli_builds_a_shipped_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stratuslab.cli.main import cli

    monkeypatch.setattr(tiny, "build_tiny", _fake_tiny)
    out = tmp_path / "t.qcow2"
    result = CliRunner().invoke(
        cli, ["appliance", "build", "tiny", "-o", str(out), "--cache-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(out))
    assert (tmp_path / "t.json").exists()


def test_cli_reports_an_unknown_recipe(tmp_path: Path) -> None:
    from stratuslab.cli.main import cli

    result = CliRunner().invoke(cli, ["appliance", "build", "nope"])
    assert result.exit_code == 3
    assert "no shipped recipe named 'nope'" in result.output


def test_cli_lists_shipped_recipes() -> None:
    from stratuslab.cli.main import cli

    result = CliRunner().invoke(cli, ["appliance", "list"])
    assert result.exit_code == 0
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [
        "debian-12-base",
        "tiny",
    ]
