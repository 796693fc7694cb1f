"""Marketplace commands.

* ``stratus image build-metadata|sign|validate|upload|search|show-entry|deprecate|tag``:
  added to the ``image`` group by :func:`register`;
* ``stratus marketplace sync``, ``stratus imagelist import|export``, ``stratus policy check``:
  the groups in :data:`GROUPS`.

Commands that talk to a marketplace use the controller's (``/api/v1/marketplace``) unless
``--marketplace URL`` (env ``STRATUS_MARKETPLACE``) names a standalone one.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.client.marketplace import MarketplaceClient
from stratuslab.errors import InvalidInput, NotFound
from stratuslab.marketplace import imagelist
from stratuslab.marketplace.certs import SigningKey, load_pem, load_pkcs12
from stratuslab.marketplace.ids import is_identifier
from stratuslab.marketplace.metadata import (
    DEFAULT_VALIDITY,
    ImageMetadata,
    build_metadata,
    canonical_bytes,
    parse_metadata,
    validate_metadata,
)
from stratuslab.marketplace.policy import EntryStatus, PolicyEntry, SitePolicy, check_any
from stratuslab.marketplace.replication import RemoteSink, replicate
from stratuslab.marketplace.schemas import Entry
from stratuslab.marketplace.signing import sign
from stratuslab.marketplace.truststore import TrustStore
from stratuslab.marketplace.verify import verify_entry

F = TypeVar("F", bound=Callable[..., Any])
HEADERS = ("entry", "identifier", "endorser", "os", "arch", "version", "status", "created")
DEFAULT_TRUST_DIR = Path("/etc/grid-security/certificates")
_FORMATS = {".qcow2": "qcow2", ".img": "raw", ".raw": "raw", ".vmdk": "vmdk", ".vdi": "vdi"}
_COMPRESSED = {".gz", ".bz2", ".xz"}
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# -- shared options ------------------------------------------------------------------------


def marketplace_option(func: F) -> F:
    return click.option(
        "--marketplace",
        "marketplace_url",
        envvar="STRATUS_MARKETPLACE",
        metavar="URL",
        help="A standalone marketplace (default: the controller's).",
    )(func)


def key_options(func: F) -> F:
    options = [
        click.option("--p12", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Endorser certificate and key (PKCS#12, e.g. usercred.p12)."),
        click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="PEM private key (with --cert)."),
        click.option("--cert", "cert_file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="PEM certificate (then its chain)."),
        click.option("--password", envvar="STRATUS_KEY_PASSWORD", default=None,
                     help="Password of the key (env STRATUS_KEY_PASSWORD)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def trust_option(func: F) -> F:
    return click.option(
        "--trust-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="STRATUS_TRUST_DIR",
        default=DEFAULT_TRUST_DIR,
        show_default=True,
        help="CA certificates and CRLs (env STRATUS_TRUST_DIR).",
    )(func)


def signing_key(
    p12: Path | None, key_file: Path | None, cert_file: Path | None, password: str | None
) -> SigningKey:
    secret = password.encode() if password is not None else None
    if p12 is not None and key_file is None and cert_file is None:
        return load_pkcs12(p12, secret)
    if p12 is None and key_file is not None and cert_file is not None:
        return load_pem(key_file, cert_file, secret)
    raise InvalidInput(
        "give the endorser's credentials: --p12 FILE, or --key FILE and --cert FILE",
        hint="grid certificates usually live in ~/.globus/usercred.p12",
    )


def client_of(app: AppContext, url: str | None) -> MarketplaceClient:
    if url:
        return MarketplaceClient(url, timeout=app.settings().timeout)
    return MarketplaceClient.of_controller(app.client)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# -- image: metadata, signing, upload ------------------------------------------------------


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
        created = _now()
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
    _emit_fields(app, result)


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
        _emit_fields(app, {"identifier": meta.identifier, "schema": "valid", "canonical": how})
        return
    trust = TrustStore.load(trust_dir)
    sig = signature.read_bytes()
    verify = imagelist.verify_listed_entry if imagelist.is_smime(sig) else verify_entry
    verified = verify(data, sig, trust, at=_now(), require_crls=require_crls)
    meta = verified.metadata
    _emit_fields(app, {
        "identifier": meta.identifier, "signature": "valid", "endorser": verified.endorser.key,
        "subject": verified.endorser.subject, "issuer": verified.endorser.issuer,
        "status": _status(meta).value,
    })  # fmt: skip


def _status(meta: ImageMetadata) -> EntryStatus:
    if meta.deprecated is not None:
        return EntryStatus.DEPRECATED
    if meta.valid_until is not None and meta.valid_until <= _now():
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
    _emit_entries(app, [entry], entry)


# -- image: reading ------------------------------------------------------------------------


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
    _emit_entries(app, page.items, page)


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
            _emit_entries(app, history, history)
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


# -- image: new entries from old ones ------------------------------------------------------


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
    now = max(_now(), current.created + timedelta(seconds=1))
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
    _emit_entries(app, [entry], entry)


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
    _emit_entries(app, [entry], entry)


def register(image_group: click.Group) -> None:
    """Add the marketplace commands to the ``stratus image`` group."""
    for command in (
        build_metadata_cmd, sign_cmd, validate_cmd, upload_cmd, search_cmd, show_entry_cmd,
        deprecate_cmd, tag_cmd,
    ):  # fmt: skip
        image_group.add_command(command)


# -- stratus marketplace -------------------------------------------------------------------


@click.group("marketplace")
def marketplace() -> None:
    """The appliance marketplace: replication."""


@marketplace.command("sync")
@click.option(
    "--from",
    "source_url",
    required=True,
    metavar="URL",
    help="Marketplace to pull from (e.g. https://central:8771).",
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="Only entries stored at the source since then.",
)
@marketplace_option
@json_option
@pass_app
@click.pass_context
def sync_cmd(
    ctx: click.Context, app: AppContext, source_url: str, since: datetime | None,
    marketplace_url: str | None,
) -> None:  # fmt: skip
    """Copy every entry of another marketplace into this one; each is verified on the way in.

    Run again at will: entries already held are skipped.
    """
    when = since.replace(tzinfo=since.tzinfo or UTC) if since is not None else None
    with MarketplaceClient(source_url) as source, client_of(app, marketplace_url) as target:
        report = replicate(source, RemoteSink(target), since=when)
    last = report.last_uploaded.isoformat() if report.last_uploaded else None
    summary = {
        "fetched": report.fetched, "stored": report.stored, "held": report.held,
        "skipped": report.skipped, "failed": len(report.failed), "next_since": last,
    }  # fmt: skip
    _emit_fields(app, {**summary, "failures": [list(f) for f in report.failed]})
    _exit_on_failures(ctx, app, [f"entry {i}: {why}" for i, why in report.failed])


# -- stratus imagelist ---------------------------------------------------------------------


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
    message = imagelist.read_location(source, limit=imagelist.MAX_LIST_BYTES)
    state = imagelist.ImageListState(state_file or default_state_file())
    fetcher = imagelist.fetching_digests() if fetch_images else None
    with client_of(app, marketplace_url) as client:
        report = imagelist.import_image_list(
            message, RemoteSink(client), TrustStore.load(trust_dir), at=_now(),
            source=source, state=state, fetcher=fetcher,
        )  # fmt: skip
    for warning in report.warnings:
        output.info(app, f"warning: {warning}")
    _emit_fields(app, {
        "list": report.list_identifier, "version": report.version, "endorser": report.endorser,
        "stored": len(report.stored), "held": len(report.held), "skipped": len(report.skipped),
        "failed": len(report.failed), "failures": [list(f) for f in report.failed],
    })  # fmt: skip
    _exit_on_failures(ctx, app, [f"image {i}: {why}" for i, why in report.failed])


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
    created = _now()
    message = imagelist.export_image_list(
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


# -- stratus policy ------------------------------------------------------------------------


@click.group("policy")
def policy() -> None:
    """Site image policy (administrators)."""


def load_policy(path: Path | None) -> SitePolicy:
    if path is None:
        return SitePolicy()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"cannot read the policy {path}: {exc}", hint="check the file") from exc
    table = data.get("policy", data)
    return SitePolicy.from_mapping(table if isinstance(table, dict) else {})


def policy_entries(entries: Iterable[Entry]) -> list[PolicyEntry]:
    """The newest entry of each endorser (``entries`` newest first), as the policy sees it."""
    newest: dict[str, Entry] = {}
    for entry in entries:
        newest.setdefault(entry.endorser.key, entry)
    return [
        PolicyEntry(
            identifier=e.identifier,
            endorser_email=e.endorser.email,
            endorser_dn=e.endorser.subject,
            checksums=frozenset(str(v) for v in (e.metadata.get("checksums") or {}).values() if v),
            status=EntryStatus(e.status),
            deprecated_reason=e.deprecated,
            valid_until=e.valid_until.strftime("%Y-%m-%dT%H:%M:%SZ") if e.valid_until else None,
        )
        for e in newest.values()
    ]


@policy.command("check")
@click.argument("identifier")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="TOML file with a [policy] table (default: accept what "
              "has a valid trusted entry).")  # fmt: skip
@marketplace_option
@json_option
@pass_app
def check_cmd(
    app: AppContext, identifier: str, policy_file: Path | None, marketplace_url: str | None
) -> None:
    """Would the site policy let instances run image IDENTIFIER? Exit 5 with the rule if not."""
    site = load_policy(policy_file)
    with client_of(app, marketplace_url) as client:
        try:
            entries = policy_entries(client.image_entries(identifier))
        except NotFound:
            entries = []
    accepted = check_any(entries, identifier, site)
    by = accepted.endorser_email or accepted.endorser_dn if accepted else "(no entry needed)"
    _emit_fields(app, {"image": identifier, "accepted": True, "endorser": by})


# -- output --------------------------------------------------------------------------------


def _rows(entries: Iterable[Entry]) -> list[tuple[str, ...]]:
    return [
        (
            output.short_id(e.id), e.identifier, e.endorser.key, output.text(e.os),
            output.text(e.os_arch), output.text(e.metadata.get("version")), e.status,
            output.fmt_time(e.created),
        )
        for e in entries
    ]  # fmt: skip


def _emit_entries(app: AppContext, entries: list[Entry], data: Any) -> None:
    output.emit(app, data, HEADERS, _rows(entries), ids=[e.id for e in entries])


def _emit_fields(app: AppContext, fields: dict[str, Any]) -> None:
    if app.json:
        output.print_json(fields)
    elif app.quiet:
        return
    else:
        output.print_fields(app, ((k, output.text(v)) for k, v in fields.items()))


def _exit_on_failures(ctx: click.Context, app: AppContext, failures: list[str]) -> None:
    if not failures:
        return
    for failure in failures:
        click.echo(click.style("Error: ", fg="red", bold=True) + failure, err=True)
    ctx.exit(1)


GROUPS: tuple[click.Group, ...] = (marketplace, imagelist_group, policy)

__all__ = ["GROUPS", "register"]
