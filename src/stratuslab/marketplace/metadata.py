"""Marketplace metadata entries: the model, its JSON Schema and its canonical bytes.

One entry describes one image (by content: identifier + checksums) as endorsed by one
endorser at one time (``created``). It is the JSON successor of the original RDF/XML
``rdf:Description``; the field-by-field mapping is in ``docs/marketplace.md``.

**Canonical bytes** (what is signed, stored and served)::

    json.dumps(entry.model_dump(mode="json", exclude_none=True),
               sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

i.e. UTF-8, keys sorted, no insignificant white space, fields whose value is ``null`` omitted,
every other field present (empty lists included), times as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, whole
seconds), no floating-point numbers anywhere. :func:`parse_metadata` refuses documents that are
not in exactly this form, so one entry has one byte representation and JSON ambiguities
(duplicate keys, number forms, escapes) cannot make two readers see different documents.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    model_validator,
)

from stratuslab.errors import InvalidInput
from stratuslab.marketplace.ids import IDENTIFIER_RE, identifier_from_sha1

SCHEMA_VERSION = 1
SCHEMA_ID = "https://stratuslab.eu/schemas/marketplace/entry-1.json"
DEFAULT_VALIDITY = timedelta(days=180)
_CHUNK = 1024 * 1024


def _utc_seconds(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time must carry a timezone (write UTC times with a trailing Z)")
    return value.astimezone(UTC).replace(microsecond=0)


def _format_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


UtcTime = Annotated[
    datetime,
    AfterValidator(_utc_seconds),
    PlainSerializer(_format_time, return_type=str, when_used="json"),
]
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_RE.pattern)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Location = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9+.-]*:\S+$", max_length=2048)]
Port = Annotated[int, Field(ge=0, le=65535)]
Kind = Literal["machine", "disk"]
Compression = Literal["gz", "bz2", "xz"]
DiskBus = Literal["ide", "scsi", "virtio", "sata", "usb"]
ImageFormat = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,15}$")]
ExtensionKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9.-]*:[A-Za-z0-9_.-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Checksums(_Strict):
    """Lowercase hex digests of the (uncompressed) image; SHA-1 is required."""

    md5: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    sha1: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    sha512: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")] | None = None

    def values(self) -> set[str]:
        """Every digest given, for checksum allow/deny lists."""
        return {v for v in (self.md5, self.sha1, self.sha256, self.sha512) if v is not None}


class Endorser(_Strict):
    """Who endorsed the entry; filled from the signing certificate, checked on verification.

    ``subject`` and ``issuer`` are distinguished names in the grid's slash form
    (``/DC=org/DC=example/CN=Jane Doe``).
    """

    email: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    subject: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    issuer: Annotated[str, StringConstraints(min_length=1, max_length=1024)]

    @property
    def key(self) -> str:
        """How the marketplace names this endorser: the email, else the subject DN."""
        return self.email.lower() if self.email is not None else self.subject


class ImageMetadata(_Strict):
    """One marketplace metadata entry (JSON Schema: :func:`schema_json`)."""

    schema_version: Literal[1] = Field(default=1, description="format version of this document")
    identifier: Identifier = Field(description="27-character id derived from the SHA-1")
    bytes: int = Field(ge=0, description="size of the (uncompressed) image in bytes")
    checksums: Checksums
    format: ImageFormat = Field(description="disk format: raw, qcow2, vmdk, ...")
    compression: Compression | None = Field(default=None, description="compression at rest")
    kind: Kind = Field(default="machine", description="bootable machine or data disk")
    os: Short | None = None
    os_version: Short | None = None
    os_arch: Short | None = None
    hypervisor: Short | None = Field(default=None, description="kvm, xen, ...")
    disks_bus: list[DiskBus] = Field(default_factory=list)
    title: Short | None = None
    description: Text
    creator: Short | None = None
    publisher: Short | None = None
    image_created: UtcTime | None = Field(default=None, description="when the image was made")
    created: UtcTime = Field(description="endorsement time: orders entries, stops replays")
    valid_until: UtcTime | None = Field(default=None, description="the entry expires after it")
    version: Short | None = None
    serial_number: int | None = Field(default=None, ge=0)
    locations: list[Location] = Field(default_factory=list, description="download URLs")
    tags: list[Tag] = Field(default_factory=list, description="series names (per endorser)")
    replaces: Identifier | None = None
    is_replaced_by: Identifier | None = None
    is_version_of: Identifier | None = None
    inbound_ports: list[Port] = Field(default_factory=list)
    outbound_ports: list[Port] = Field(default_factory=list, description="0 means all")
    icmp_types: list[Annotated[int, Field(ge=0, le=255)]] = Field(default_factory=list)
    deprecated: Text | None = Field(default=None, description="reason; present = deprecated")
    endorser: Endorser | None = Field(default=None, description="filled in when signing")
    extensions: dict[ExtensionKey, JsonValue] = Field(
        default_factory=dict, description="application terms, keys namespaced as ns:name"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ImageMetadata:
        expected = identifier_from_sha1(self.checksums.sha1)
        if self.identifier != expected:
            raise ValueError(
                f"identifier {self.identifier} does not match checksums.sha1 "
                f"{self.checksums.sha1} (which gives identifier {expected})"
            )
        if self.valid_until is not None and self.valid_until <= self.created:
            raise ValueError(
                f"valid_until {_format_time(self.valid_until)} is not after "
                f"created {_format_time(self.created)}"
            )
        return self


def canonical_bytes(metadata: ImageMetadata) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    document = metadata.model_dump(mode="json", exclude_none=True)
    return _dump(document)


def _dump(document: Any) -> bytes:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def validate_metadata(document: Any) -> ImageMetadata:
    """Validate a decoded document; errors name every bad field."""
    try:
        return ImageMetadata.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput(
            "invalid metadata: " + describe_errors(exc),
            hint="fix the named fields (schema: stratuslab.marketplace.schema_json())",
            details={"fields": [_loc(e["loc"]) for e in exc.errors()]},
        ) from exc


def describe_errors(exc: ValidationError) -> str:
    return "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors())


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "document"


def parse_metadata(data: bytes) -> ImageMetadata:
    """Parse signed bytes: UTF-8 JSON, one object, no duplicate keys, canonical form."""
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"metadata is not UTF-8: {exc.reason} at byte {exc.start}",
            hint="metadata entries are UTF-8 JSON",
        ) from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"metadata is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint="metadata entries are JSON objects",
        ) from exc
    if not isinstance(document, dict):
        raise InvalidInput("metadata must be a JSON object", hint="send one entry per upload")
    metadata = validate_metadata(document)
    if canonical_bytes(metadata) != data:
        raise InvalidInput(
            "metadata is not in canonical form (sorted keys, no white space, UTF-8, "
            "no null fields, every other field present, times as YYYY-MM-DDTHH:MM:SSZ)",
            hint="serialize with stratuslab.marketplace.canonical_bytes() before signing",
        )
    return metadata


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidInput(
                f"metadata repeats the key {key!r}", hint="every key may appear only once"
            )
        result[key] = value
    return result


def schema_json() -> dict[str, Any]:
    """The published JSON Schema of a metadata entry."""
    schema = _without_nulls(ImageMetadata.model_json_schema(mode="validation"))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def _without_nulls(node: Any) -> Any:
    """Optional fields are omitted, never ``null``, in canonical documents: say so."""
    if isinstance(node, list):
        return [_without_nulls(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {k: _without_nulls(v) for k, v in node.items() if not (k == "default" and v is None)}
    options = result.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del result["anyOf"]
        result = {**rest[0], **result} if len(rest) == 1 else {**result, "anyOf": rest}
    return result


def schema_text() -> str:
    """:func:`schema_json` as committed in ``metadata.schema.json``."""
    return json.dumps(schema_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- building an entry from an image file -------------------------------------------------

_COMPRESSIONS = ("gz", "bz2", "xz")
_SUFFIXES = {".gz": "gz", ".bz2": "bz2", ".xz": "xz"}


def file_digests(path: Path, compression: str | None = None) -> tuple[int, Checksums]:
    """Size and digests of the (decompressed) content of ``path``, read in 1 MiB chunks."""
    hashers = {name: hashlib.new(name) for name in ("md5", "sha1", "sha256", "sha512")}
    size = 0
    try:
        with _open(path, compression) as stream:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
    except FileNotFoundError as exc:
        raise InvalidInput(f"no image file at {path}", hint="check the path") from exc
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise InvalidInput(
            f"cannot read {path} as {compression or 'uncompressed'} data: {exc}",
            hint="check the file and the compression field",
        ) from exc
    return size, Checksums(**{name: h.hexdigest() for name, h in hashers.items()})


def _open(path: Path, compression: str | None) -> io.BufferedIOBase:
    if compression == "gz":
        return gzip.GzipFile(path, "rb")
    if compression == "bz2":
        return bz2.BZ2File(path, "rb")
    if compression == "xz":
        return lzma.LZMAFile(path, "rb")
    return path.open("rb")


def build_metadata(image_path: Path, **fields: Any) -> ImageMetadata:
    """An unsigned entry for an image file: size, checksums and identifier are computed.

    ``fields`` are :class:`ImageMetadata` fields (misspelt names are errors). ``created``
    defaults to now and ``valid_until`` to ``created`` + 180 days. ``compression`` defaults
    from the file suffix (``.gz``, ``.bz2``, ``.xz``); the digests are those of the
    decompressed content. A given identifier, size or checksum must match the file.
    """
    path = Path(image_path)
    compression = fields.get("compression", _SUFFIXES.get(path.suffix))
    if compression is not None and compression not in _COMPRESSIONS:
        raise InvalidInput(
            f"compression {compression!r} is not supported", hint="use gz, bz2, xz or none"
        )
    size, checksums = file_digests(path, compression)
    _check_given(fields, size, checksums)
    created = fields.get("created") or datetime.now(UTC)
    document = {
        "valid_until": _as_time(created) + DEFAULT_VALIDITY,
        **fields,
        "identifier": identifier_from_sha1(checksums.sha1),
        "bytes": size,
        "checksums": checksums,
        "created": created,
        "compression": compression,
    }
    return validate_metadata(document)


def _as_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))


def _check_given(fields: dict[str, Any], size: int, checksums: Checksums) -> None:
    given_id = fields.get("identifier")
    actual_id = identifier_from_sha1(checksums.sha1)
    if given_id is not None and given_id != actual_id:
        raise InvalidInput(
            f"identifier {given_id} does not match the file, whose SHA-1 "
            f"{checksums.sha1} gives identifier {actual_id}",
            hint="leave identifier out: it is computed from the file",
        )
    if fields.get("bytes") is not None and fields["bytes"] != size:
        raise InvalidInput(
            f"bytes {fields['bytes']} does not match the file size {size}",
            hint="leave bytes out: it is computed from the file",
        )
    given = fields.get("checksums") or {}
    if isinstance(given, Checksums):
        given = given.model_dump(exclude_none=True)
    actual = checksums.model_dump()
    for name, value in dict(given).items():
        if actual.get(name) != str(value).lower():
            raise InvalidInput(
                f"checksums.{name} {value} does not match the file's {name} {actual.get(name)}",
                hint="leave checksums out: they are computed from the file",
            )
