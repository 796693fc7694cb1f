"""``stratus appliance ...``: build appliances on this machine from recipes and Debian packages."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from stratuslab.config import default_data_dir


@click.group()
def appliance() -> None:
    """Build virtual machine appliances from recipes (Debian packages)."""


@appliance.command("list")
def list_recipes() -> None:
    """List the recipes shipped with StratusLab."""
    from stratuslab.appliances.recipe import load_recipe, shipped_recipes

    for name, path in shipped_recipes().items():
        spec = load_recipe(path)
        click.echo(f"{name}\t{spec.version}\t{spec.description}")


@appliance.command("build")
@click.argument("recipe")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Image file to write (qcow2)."
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="Where built images and downloaded packages are kept.",
)
def build(recipe: str, output: Path | None, cache_dir: Path | None) -> None:
    """Build RECIPE (a .yaml file, or a shipped recipe: tiny, debian-12-base) into a qcow2.

    The image's metadata (name, version, os, arch, sha256, size, created, recipe hash) is
    written next to it as a .json file. An image built before from the same recipe and the same
    package versions is reused from the cache.
    """
    from stratuslab.appliances.builder import build_recipe
    from stratuslab.appliances.recipe import resolve_recipe

    path = resolve_recipe(recipe)
    base = default_data_dir() / "appliances"
    output = output or base / f"{path.stem}.qcow2"
    cache_dir = cache_dir or base / "cache"
    console = Console(stderr=True)
    started = time.monotonic()
    with console.status(f"building {path.stem}", spinner="dots") as status:

        def progress(message: str) -> None:
            status.update(f"[bold]{path.stem}[/]: {message}")
            console.log(message)

        result = build_recipe(path, output, cache_dir=cache_dir, progress=progress)
    size = result.image.stat().st_size / 2**20
    how = "reused" if result.cached else "built"
    elapsed = time.monotonic() - started
    console.print(f"[green]{how}[/] {result.image} ({size:.1f} MiB) in {elapsed:.1f} s")
    console.print(f"metadata: {result.metadata_path}")
    click.echo(str(result.image))
