"""``stratus appliance ...``: build appliances on this machine from distribution packages."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from stratuslab.config import default_data_dir

RECIPES = ("tiny",)


@click.group()
def appliance() -> None:
    """Build virtual machine appliances from Debian packages."""


@appliance.command("build")
@click.argument("recipe", type=click.Choice(RECIPES))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Image file to write (qcow2)."
)
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="Where downloaded packages are kept."
)
def build(recipe: str, output: Path | None, cache_dir: Path | None) -> None:
    """Build the RECIPE appliance into a bootable qcow2 disk image.

    `tiny` is a Debian kernel with busybox and dropbear: it reads the cloud-init NoCloud
    seed (hostname, SSH keys), prints a READY line on the serial console and serves SSH.
    """
    from stratuslab.appliances.tiny import build_tiny

    base = default_data_dir() / "appliances"
    output = output or base / f"{recipe}.qcow2"
    cache_dir = cache_dir or base / "cache"
    console = Console(stderr=True)
    started = time.monotonic()
    with console.status(f"building {recipe}", spinner="dots") as status:

        def progress(message: str) -> None:
            status.update(f"[bold]{recipe}[/]: {message}")
            console.log(message)

        path = build_tiny(output, cache_dir=cache_dir, progress=progress)
    size = path.stat().st_size / 2**20
    console.print(f"[green]built[/] {path} ({size:.1f} MiB) in {time.monotonic() - started:.1f} s")
    click.echo(str(path))
