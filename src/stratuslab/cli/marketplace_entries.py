"""``stratus image`` marketplace commands: build-metadata, sign, validate, upload, search,
show-entry, deprecate and tag (added to the ``image`` group by
:func:`stratuslab.cli.marketplace.register`).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.marketplace_common import (
    client_of,
    emit_entries,
    emit_fields,
    key_options,
    marketplace_option,
    signing_key,
    trust_option,
    utc_now,
)
from stratuslab.client.marketplace import MarketplaceClient
from stratuslab.errors import InvalidInput, NotFound
from stratuslab.marketplace.certs import SigningKey
from stratuslab.marketplace.ids import is_identifier
from stratuslab.marketplace.imagelist import verify_listed_entry
from stratuslab.marketplace.metadata import (
    DEFAULT_VALIDITY,
    ImageMetadata,
    build_metadata,
    canonical_bytes,
    parse_metadata,
    validate_metadata,
)
from stratuslab.marketplace.policy import EntryStatus
from stratuslab.marketplace.signing import sign
from stratuslab.marketplace.smime import is_smime
from stratuslab.marketplace.truststore import TrustStore
from stratuslab.marketplace.verify import verify_entry

_FORMATS = {".qcow2": "qcow2", ".img": "raw", ".raw": "raw", ".vmdk": "vmdk", ".vdi": "vdi"}
_COMPRESSED = {".gz", ".bz2", ".xz"}
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# -- metadata, signing, upload -------------------------------------------------------------


def _metadata_path(image: Path) -> Path:
    stem = image.with_suffix("") if image.suffix in _COMPRESSED else image
    return Path(f"{stem}.json")


def _format_of(image: Path) -> str | None:
    stem = image.with_suffix("") if image.suffix in _COMPRESSED else image
    return _FORMATS.get(stem.suffix)


@click.command("build-metadata")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("-d", "--description", required=True, help="What the image is (required).")
@click.option("--format", "image_format", help="raw, qcow2, ... (default: from the suffix).")
@click.option(
    "--compression", type=click.Choice(["gz", "bz2", "xz"]), help="Default: from the suffix."
)
@click.option(
    "--kind", type=click.Choice(["machine", "disk"]), default="machine", show_default=True
)
@click.option("--title")
@click.option("--os")
@click.option("--os-version")
@click.option("--os-arch", "--arch", "os_arch")
@click.option("--hypervisor")
@click.option(
    "--disks-bus", multiple=True, type=click.Choice(["ide", "scsi", "virtio", "sata", "usb"])
)
@click.option("--creator", "--author", "creator")
@click.option("--publisher")
@click.option("--image-version", "version")
@click.option("--serial-number", type=int)
@click.option("--location", "locations", multiple=True, help="Download URL (repeat).")
@click.option("--tag", "tags", multiple=True, help="Series name (repeat).")
@click.option("--replaces", help="Identifier of the image this one replaces.")
@click.option("--inbound-port", "inbound_ports", type=int, multiple=True)
@click.option("--outbound-port", "outbound_ports", type=int, multiple=True)
@click.option(
    "--valid-for",
    type=click.IntRange(min=1),
    metavar="DAYS",
    help="Days the entry stays valid (default 180).",
)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Metadata file (one image only; default FILE.json).",
)
@json_option
@pass_app
def build_metadata_cmd(
    app: AppContext, /, files: tuple[Path, ...], image_format: str | None,
    valid_for: int | None, out: Path | None, **fields: Any,
) -> None:  # fmt: skip
    """Compute size, checksums and identifier of image FILEs and write their metadata.

    The result is unsigned: check it, then `stratus image sign`.
    """
    if out is not None and len(files) > 1:
        raise InvalidInput("--output needs exactly one FILE", hint="drop --output")
    given = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}
    given = {k: v for k, v in given.items() if v not in (None, [])}
    built = []
    for image in files:
        fmt = image_format or _format_of(image)
        if fmt is None:
            raise InvalidInput(f"cannot tell the format of {image}", hint="pass --format")
        created = utc_now()
        extra = {"valid_until": created + timedelta(days=valid_for)} if valid_for else {}
        meta = build_metadata(image, format=fmt, created=created, **extra, **given)
        target = out or _metadata_path(image)
        document = meta.model_dump(mode="json", exclude_none=True)
        target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        built.append({"identifier": meta.identifier, "file": str(image), "metadata": str(target)})
    rows = [tuple(b.values()) for b in built]
    output.emit(app, built, ("identifier", "file", "metadata"), rows, ids=[r[0] for r in rows])


def _read_metadata(path: Path) -> ImageMetadata:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path} as JSON: {exc}", hint="check the file") from exc
    return validate_metadata(document)


@click.command("sign")
@click.argument("metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@key_options
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Signed metadata (default: rewrite METADATA in canonical form).",
)
@click.option(
    "--signature",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Signature file (default: METADATA with suffix .p7s).",
)
@json_option
@pass_app
def sign_cmd(
    app: AppContext, metadata: Path, p12: Path | None, key_file: Path | None,
    cert_file: Path | None, password: str | None, out: Path | None, signature: Path | None,
) -> None:  # fmt: skip
    """Endorse METADATA: fill the endorser from the certificate and sign the exact bytes."""
    key = signing_key(p12, key_file, cert_file, password)
    signed = sign(_read_metadata(metadata), key)
    target, sig_path = out or metadata, signature or metadata.with_suffix(".p7s")
    target.write_bytes(signed.metadata)
    sig_path.write_bytes(signed.signature)
    result = {"metadata": str(target), "signature": str(sig_path), "endorser": key.endorser.key}
    emit_fields(app, result)


@click.command("validate")
@click.argument("metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--signature",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also verify this signature (against --trust-dir).",
)
@trust_option
@click.option("--require-crls", is_flag=True, help="Refuse CAs without a CRL.")
@json_option
@pass_app
def validate_cmd(
    app: AppContext, metadata: Path, signature: Path | None, trust_dir: Path,
    require_crls: bool,
) -> None:  # fmt: skip
    """Check METADATA against the schema and, with --signature, verify the signature."""
    data = metadata.read_bytes()
    if signature is None:
        meta = _read_metadata(metadata)
        canonical = canonical_bytes(meta) == data
        how = "yes" if canonical else "no (sign rewrites it)"
        emit_fields(app, {"identifier": meta.identifier, "schema": "valid", "canonical": how})
        return
    trust = TrustStore.load(trust_dir)
    sig = signature.read_bytes()
    verify = verify_listed_entry if is_smime(sig) else verify_entry
    verified = verify(data, sig, trust, at=utc_now(), require_crls=require_crls)
    meta = verified.metadata
    emit_fields(app, {
        "identifier": meta.identifier, "signature": "valid", "endorser": verified.endorser.key,
        "subject": verified.endorser.subject, "issuer": verified.endorser.issuer,
        "status": _status(meta).value,
    })  # fmt: skip


def _status(meta: ImageMetadata) -> EntryStatus:
    if meta.deprecated is not None:
        return EntryStatus.DEPRECATED
    if meta.valid_until is not None and meta.valid_until <= utc_now():
        return EntryStatus.EXPIRED
    return EntryStatus.VALID


@click.command("upload")
@click.argument("metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("signature", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@marketplace_option
@json_option
@pass_app
def upload_cmd(
    app: AppContext, metadata: Path, signature: Path, marketplace_url: str | None
) -> None:
    """Upload a signed entry (METADATA exactly as signed, and its SIGNATURE)."""
    with client_of(app, marketplace_url) as client:
        entry = client.upload(metadata.read_bytes(), signature.read_bytes())
    emit_entries(app, [entry], entry)


# -- reading ------------------------------------------------------------------------


@click.command("search")
@click.option("--endorser", help="Email or DN.")
@click.option("--os")
@click.option("--arch")
@click.option("--kind", type=click.Choice(["machine", "disk"]))
@click.option("--tag")
@click.option(
    "--status",
    type=click.Choice(["valid", "expired", "deprecated", "all"]),
    default="valid",
    show_default=True,
)
@click.option("--text", help="Words in the title or description.")
@click.option("--identifier")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@marketplace_option
@json_option
@pass_app
def search_cmd(app: AppContext, /, marketplace_url: str | None, **filters: Any) -> None:
    """Search the marketplace (newest entry of each image and endorser)."""
    with client_of(app, marketplace_url) as client:
        page = client.search(**filters)
    if not (app.json or app.quiet):
        shown = f"{page.offset + 1}-{page.offset + len(page.items)}" if page.items else "0"
        output.info(app, f"{shown} of {page.total}")
    emit_entries(app, page.items, page)


@click.command("show-entry")
@click.argument("ref", metavar="ID|IDENTIFIER|ENDORSER/TAG")
@marketplace_option
@json_option
@pass_app
def show_entry_cmd(app: AppContext, ref: str, marketplace_url: str | None) -> None:
    """Show an entry (by entry id), an image's history (by identifier), or what a tag
    resolves to (ENDORSER/TAG, the endorser by email or DN)."""
    with client_of(app, marketplace_url) as client:
        if is_identifier(ref):
            history = client.image_entries(ref)
            emit_entries(app, history, history)
            return
        if _UUID_RE.fullmatch(ref):
            entry = client.get_entry(ref)
        elif "/" in ref:
            endorser, _, tag = ref.rpartition("/")
            entry = client.resolve_tag(endorser, tag)
        else:
            raise InvalidInput(
                f"{ref!r} is neither an entry id, an image identifier nor ENDORSER/TAG",
                hint="e.g. MMZu9WvwKIro-rtBQfDk4PsKO7_ or jane@example.org/ubuntu-lts",
            )
    if app.json:
        output.print_json(entry)
        return
    fields = entry.model_dump(exclude={"metadata"})
    fields["endorser"] = entry.endorser.key
    fields.update({k: v for k, v in entry.metadata.items() if k not in fields})
    output.print_fields(app, ((k, output.text(v)) for k, v in fields.items()))


# -- new entries from old ones ------------------------------------------------------


def _newer_entry(
    client: MarketplaceClient, identifier: str, key: SigningKey, **changes: Any
) -> ImageMetadata:
    """The signer's newest entry for the image with ``changes``, created now."""
    try:
        mine = client.endorser_entries(identifier, key.endorser.key)
    except NotFound as exc:
        raise NotFound(
            f"{key.endorser.key} has no entry for image {identifier} to update",
            hint="endorse the image first (build-metadata, sign, upload)",
        ) from exc
    current = parse_metadata(client.signed(mine[0].id).metadata)
    # entries are ordered by whole seconds: never equal to the one it replaces
    now = max(utc_now(), current.created + timedelta(seconds=1))
    document = current.model_dump(mode="json", exclude_none=True)
    document.update(changes, created=now)
    if current.valid_until is not None and current.valid_until <= now:
        document["valid_until"] = now + DEFAULT_VALIDITY
    return validate_metadata(document)


@click.command("deprecate")
@click.argument("identifier")
@click.option("--reason", required=True, help="Why the image should no longer be used.")
@key_options
@marketplace_option
@json_option
@pass_app
def deprecate_cmd(
    app: AppContext, identifier: str, reason: str, p12: Path | None, key_file: Path | None,
    cert_file: Path | None, password: str | None, marketplace_url: str | None,
) -> None:  # fmt: skip
    """Deprecate an image you endorsed: upload a newer signed entry with the reason."""
    key = signing_key(p12, key_file, cert_file, password)
    with client_of(app, marketplace_url) as client:
        meta = _newer_entry(client, identifier, key, deprecated=reason)
        signed = sign(meta, key)
        entry = client.upload(signed.metadata, signed.signature)
    emit_entries(app, [entry], entry)


@click.command("tag")
@click.argument("identifier")
@click.argument("tags", nargs=-1)
@click.option("--remove", multiple=True, help="Tag to remove (repeat).")
@key_options
@marketplace_option
@json_option
@pass_app
def tag_cmd(
    app: AppContext, identifier: str, tags: tuple[str, ...], remove: tuple[str, ...],
    p12: Path | None, key_file: Path | None, cert_file: Path | None, password: str | None,
    marketplace_url: str | None,
) -> None:  # fmt: skip
    """Add (or --remove) series TAGS on an image you endorsed: a newer signed entry.

    `stratus image show-entry ENDORSER/TAG` then resolves to the newest valid image.
    """
    if not tags and not remove:
        raise InvalidInput("give tags to add or --remove TAG", hint="e.g. ubuntu-lts")
    key = signing_key(p12, key_file, cert_file, password)
    with client_of(app, marketplace_url) as client:
        current = client.endorser_entries(identifier, key.endorser.key)[0].tags
        wanted = [t for t in dict.fromkeys([*current, *tags]) if t not in remove]
        meta = _newer_entry(client, identifier, key, tags=wanted)
        signed = sign(meta, key)
        entry = client.upload(signed.metadata, signed.signature)
    emit_entries(app, [entry], entry)


#: the commands :func:`stratuslab.cli.marketplace.register` adds to ``stratus image``
COMMANDS: tuple[click.Command, ...] = (
    build_metadata_cmd, sign_cmd, validate_cmd, upload_cmd, search_cmd, show_entry_cmd,
    deprecate_cmd, tag_cmd,
)  # fmt: skip
