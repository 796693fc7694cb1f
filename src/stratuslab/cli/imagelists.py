"""``stratus imagelist import|export``: HEPiX signed image lists (vmcatcher, cloudkeeper,
AppDB) into and out of a marketplace."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.marketplace_common import (
    client_of,
    emit_fields,
    exit_on_failures,
    key_options,
    marketplace_option,
    signing_key,
    trust_option,
    utc_now,
)
from stratuslab.client.marketplace import MarketplaceClient
from stratuslab.errors import NotFound
from stratuslab.marketplace.certs import SigningKey
from stratuslab.marketplace.ids import is_identifier
from stratuslab.marketplace.imagelist import MAX_LIST_BYTES, ImageListState, import_image_list
from stratuslab.marketplace.imagelist_export import export_image_list
from stratuslab.marketplace.imagelist_fetch import fetching_digests, read_location
from stratuslab.marketplace.metadata import ImageMetadata, parse_metadata
from stratuslab.marketplace.policy import EntryStatus
from stratuslab.marketplace.replication import RemoteSink
from stratuslab.marketplace.truststore import TrustStore


@click.group("imagelist")
def imagelist_group() -> None:
    """HEPiX signed image lists (vmcatcher, cloudkeeper, AppDB)."""


def default_state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "stratuslab" / "imagelists.json"


@imagelist_group.command("import")
@click.argument("source", metavar="URL|FILE")
@trust_option
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Versions imported so far (default ~/.local/state/stratuslab/imagelists.json).",
)
@click.option(
    "--fetch-images/--no-fetch-images",
    default=True,
    show_default=True,
    help="Download images whose SHA-1 the list lacks (it gives their id).",
)
@marketplace_option
@json_option
@pass_app
@click.pass_context
def import_cmd(
    ctx: click.Context, app: AppContext, source: str, trust_dir: Path, state_file: Path | None,
    fetch_images: bool, marketplace_url: str | None,
) -> None:  # fmt: skip
    """Import a signed image list: verify it, then add one entry per image, attributed to
    the list's endorser (the marketplace verifies each again)."""
    message = read_location(source, limit=MAX_LIST_BYTES)
    state = ImageListState(state_file or default_state_file())
    fetcher = fetching_digests() if fetch_images else None
    with client_of(app, marketplace_url) as client:
        report = import_image_list(
            message, RemoteSink(client), TrustStore.load(trust_dir), at=utc_now(),
            source=source, state=state, fetcher=fetcher,
        )  # fmt: skip
    for warning in report.warnings:
        output.info(app, f"warning: {warning}")
    emit_fields(app, {
        "list": report.list_identifier, "version": report.version, "endorser": report.endorser,
        "stored": len(report.stored), "held": len(report.held), "skipped": len(report.skipped),
        "failed": len(report.failed), "failures": [list(f) for f in report.failed],
    })  # fmt: skip
    exit_on_failures(ctx, app, [f"image {i}: {why}" for i, why in report.failed])


@imagelist_group.command("export")
@click.option(
    "--id",
    "refs",
    multiple=True,
    required=True,
    metavar="ID",
    help="Entry id, or image identifier (its newest valid entry); repeat.",
)
@key_options
@click.option("--version", "list_version", required=True, help="hv:version (must grow).")
@click.option("--uri", required=True, help="Where the list will be published (hv:uri).")
@click.option("--list-id", help="dc:identifier of the list (default: a new UUID).")
@click.option("--title", default="StratusLab image list", show_default=True)
@click.option("--description", default="Images endorsed in a StratusLab marketplace")
@click.option("--source", default="", help="dc:source (default: the --uri).")
@click.option(
    "--expires-in", type=click.IntRange(min=1), default=28, show_default=True, metavar="DAYS"
)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Default: standard output.",
)
@marketplace_option
@pass_app
def export_cmd(
    app: AppContext, refs: tuple[str, ...], p12: Path | None, key_file: Path | None,
    cert_file: Path | None, password: str | None, list_version: str, uri: str,
    list_id: str | None, title: str, description: str, source: str, expires_in: int,
    out: Path | None, marketplace_url: str | None,
) -> None:  # fmt: skip
    """Publish entries as an S/MIME signed image list (vmcatcher/cloudkeeper subscribe)."""
    key = signing_key(p12, key_file, cert_file, password)
    with client_of(app, marketplace_url) as client:
        entries = [_entry_metadata(client, ref, key) for ref in refs]
    created = utc_now()
    message = export_image_list(
        entries, key, identifier=list_id or str(uuid.uuid4()), version=list_version,
        title=title, description=description, uri=uri, source=source, created=created,
        expires=created + timedelta(days=expires_in),
    )  # fmt: skip
    if out is None:
        click.echo(message.decode("utf-8"), nl=False)
    else:
        out.write_bytes(message)
        output.info(app, f"wrote {out}: {len(entries)} image(s), version {list_version}")


def _entry_metadata(client: MarketplaceClient, ref: str, key: SigningKey) -> ImageMetadata:
    if not is_identifier(ref):
        return parse_metadata(client.signed(ref).metadata)
    valid = [e for e in client.image_entries(ref) if e.status == EntryStatus.VALID.value]
    if not valid:
        raise NotFound(f"image {ref} has no valid entry", hint="pass an entry id instead")
    own = [e for e in valid if e.endorser.key == key.endorser.key]
    return parse_metadata(client.signed((own or valid)[0].id).metadata)
