"""``stratus appliance ...``: build appliances on this machine from recipes and Debian packages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.marketplace_common import (
    client_of,
    key_options,
    marketplace_option,
    signing_key,
)
from stratuslab.config import default_data_dir
from stratuslab.marketplace.certs import SigningKey


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
@click.option("--sign", is_flag=True, help="Write a signed marketplace entry next to it.")
@click.option("--upload", is_flag=True, help="Upload the signed entry to the marketplace.")
@click.option(
    "--location",
    "locations",
    multiple=True,
    metavar="URL",
    help="Where the image will be downloadable, for the signed entry (repeatable).",
)
@key_options
@marketplace_option
@pass_app
def build(
    app: AppContext,
    recipe: str,
    output: Path | None,
    cache_dir: Path | None,
    sign: bool,
    upload: bool,
    locations: tuple[str, ...],
    p12: Path | None,
    key_file: Path | None,
    cert_file: Path | None,
    password: str | None,
    marketplace_url: str | None,
) -> None:
    """Build RECIPE (a .yaml file, or a shipped recipe: tiny, debian-12-base) into a qcow2.

    The image's metadata (name, version, os, arch, sha256, size, created, recipe hash) is
    written next to it as a .json file. An image built before from the same recipe and the same
    package versions is reused from the cache. With --sign (and --p12, or --key and --cert) a
    signed marketplace entry is written next to it (.entry.json + .entry.p7s); --upload also
    publishes it.
    """
    key = signing_key(p12, key_file, cert_file, password) if sign or upload else None
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
    if key is not None:
        entry_path = sign_built(result.image, result.metadata, key, list(locations))
        console.print(f"signed entry: {entry_path}")
        if upload:
            with client_of(app, marketplace_url) as market:
                entry = market.upload(
                    entry_path.read_bytes(), entry_path.with_suffix(".p7s").read_bytes()
                )
            console.print(f"published {entry.identifier} endorsed by {entry.endorser.key}")
    click.echo(str(result.image))


def sign_built(image: Path, built: dict[str, Any], key: SigningKey, locations: list[str]) -> Path:
    """Sign marketplace metadata for a built image; write IMAGE.entry.json and .entry.p7s."""
    from stratuslab.marketplace.metadata import build_metadata
    from stratuslab.marketplace.signing import sign

    meta = build_metadata(
        image,
        format="qcow2",
        title=str(built.get("name") or image.stem),
        description=str(built.get("description") or f"built from recipe {built.get('name')}"),
        os=built.get("os"),
        os_version=built.get("os_version"),
        os_arch="x86_64" if built.get("arch") in (None, "amd64") else built.get("arch"),
        version=built.get("version"),
        locations=locations,
    )
    signed = sign(meta, key)
    entry = image.with_name(image.stem + ".entry.json")
    entry.write_bytes(signed.metadata)
    entry.with_suffix(".p7s").write_bytes(signed.signature)
    return entry


@appliance.command("derive")
@click.argument("base")
@click.option("--name", required=True, help="Name of the new image.")
@click.option("-a", "--packages", default="", help="Comma-separated packages to install.")
@click.option(
    "-s",
    "--script",
    "scripts",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Shell script to run as root in the guest (repeatable, in order).",
)
@click.option("-t", "--type", "flavor", help="Flavor of the build instance.")
@click.option("--timeout", type=float, default=900.0, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the build instance (for debugging).")
@json_option
@pass_app
def derive_cmd(
    app: AppContext,
    base: str,
    name: str,
    packages: str,
    scripts: tuple[Path, ...],
    flavor: str | None,
    timeout: float,
    keep: bool,
) -> None:
    """Derive a new image from BASE: boot it, install packages, run scripts, clean, save.

    Like the original `stratus-create-image`. Packages need the guest to reach a mirror
    (controller setting guest_egress = true).
    """
    from stratuslab.cli.derive import derive

    console = Console(stderr=True)
    with console.status("deriving", spinner="dots") as status:

        def step(message: str) -> None:
            status.update(message)
            console.log(message)

        image = derive(
            app,
            base=base,
            name=name,
            packages=[p for p in packages.split(",") if p.strip()],
            scripts=scripts,
            flavor=flavor,
            timeout=timeout,
            keep=keep,
            step=step,
        )
    output.emit(
        app,
        [image],
        ("id", "name", "status"),
        [(image.id, image.name, image.status)],
        ids=[image.id],
    )
