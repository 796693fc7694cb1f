"""Image commands: ``stratus image add|list|show|delete``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.marketplace_common import (
    client_of,
    key_options,
    marketplace_option,
    signing_key,
)
from stratuslab.cli.progress import upload_bar, wait
from stratuslab.marketplace.metadata import validate_metadata
from stratuslab.marketplace.signing import sign as sign_metadata
from stratuslab.schemas.images import Image

HEADERS = ("id", "name", "format", "size", "virtual size", "status", "visibility", "created")


@click.group("image")
def image() -> None:
    """Manage disk images."""


@image.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Image name (default: the file name without its extension).")
@json_option
@pass_app
def add(app: AppContext, file: Path, name: str | None) -> None:
    """Upload a qcow2 or raw disk image FILE."""
    image_name = name or file.name.split(".")[0]
    with upload_bar(app, f"uploading {file.name}", file.stat().st_size) as advance:
        uploaded = app.client.upload_image(file, image_name, on_bytes=advance)
    output.emit(app, uploaded, HEADERS, _rows([uploaded]), ids=[uploaded.id])


@image.command("list")
@json_option
@pass_app
def list_(app: AppContext) -> None:
    """List the images you can use."""
    images = app.client.list_images()
    output.emit(app, images, HEADERS, _rows(images), ids=[i.id for i in images])


@image.command("show")
@click.argument("ref", metavar="ID")
@json_option
@pass_app
def show(app: AppContext, ref: str) -> None:
    """Show every field of an image."""
    found = app.client.get_image(ref)
    if app.json:
        output.print_json(found)
    else:
        output.print_fields(app, ((k, output.text(v)) for k, v in found.model_dump().items()))


@image.command("delete")
@click.argument("refs", metavar="ID...", nargs=-1, required=True)
@pass_app
@click.pass_context
def delete(ctx: click.Context, app: AppContext, refs: Sequence[str]) -> None:
    """Delete images (goes on after an error)."""
    failures = output.Failures()
    for ref in refs:
        with failures.item():
            app.client.delete_image(ref)
            output.info(app, f"deleted: {ref}")
    failures.exit(ctx)


@image.command("save")
@click.argument("instance")
@click.option("--name", required=True, help="Name of the new image.")
@click.option("--no-wait", is_flag=True, help="Return once the request is accepted.")
@click.option("--sign", is_flag=True, help="Sign the metadata and publish it in the marketplace.")
@click.option(
    "--location",
    "locations",
    multiple=True,
    metavar="URL",
    help="Where the image can be downloaded, for the signed entry (repeatable; default: the "
    "controller's image URL).",
)
@key_options
@marketplace_option
@json_option
@pass_app
def save(
    app: AppContext,
    instance: str,
    name: str,
    no_wait: bool,
    sign: bool,
    locations: tuple[str, ...],
    p12: Path | None,
    key_file: Path | None,
    cert_file: Path | None,
    password: str | None,
    marketplace_url: str | None,
) -> None:
    """Save a stopped INSTANCE's root disk as a new image.

    The image gets draft marketplace metadata (`stratus image metadata NAME`). With --sign and
    your endorser certificate (--p12, or --key and --cert) it is signed and published at once;
    otherwise sign it later with `stratus image sign` and `stratus image upload`.
    """
    key = signing_key(p12, key_file, cert_file, password) if sign else None
    op = app.client.save_instance(instance, name)
    if no_wait and key is None:
        output.info(app, f"saving {instance} as {name}: {op.id}")
        return
    wait(app, op, timeout=3600, label=f"saving {instance} as {name}")
    img = app.client.get_image(name)
    if key is not None:
        where = list(locations) or [f"{app.settings().endpoint}/api/v1/images/{img.id}/file"]
        draft = {**app.client.image_metadata(img.id), "locations": where}
        signed = sign_metadata(validate_metadata(draft), key)
        with client_of(app, marketplace_url) as market:
            entry = market.upload(signed.metadata, signed.signature)
        output.info(app, f"published {entry.identifier} endorsed by {entry.endorser.key}")
    output.emit(app, [img], HEADERS, _rows([img]), ids=[img.id])


@image.command("metadata")
@click.argument("ref")
@pass_app
def metadata(app: AppContext, ref: str) -> None:
    """Print the draft marketplace metadata of a saved image (JSON)."""
    click.echo(json.dumps(app.client.image_metadata(ref), indent=2, sort_keys=True))


def _rows(images: Iterable[Image]) -> list[tuple[str, ...]]:
    return [
        (
            output.short_id(i.id),
            i.name,
            i.format,
            output.fmt_bytes(i.size_bytes),
            output.fmt_bytes(i.virtual_size_bytes),
            i.status,
            i.visibility,
            output.fmt_time(i.created_at),
        )
        for i in images
    ]
