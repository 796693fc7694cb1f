"""HEPiX image lists: read, verify and import them; export marketplace entries as one.

An image list is a JSON document ``{"hv:imagelist": {...}}`` signed as S/MIME by its
endorser (``multipart/signed`` with a detached PKCS#7, or opaque ``application/pkcs7-mime``),
the format vmcatcher, atrope and cloudkeeper subscribe to (``docs/marketplace.md``).

**Import.** :func:`verify_image_list` checks the signature with the marketplace's own CMS
verifier (:func:`~stratuslab.marketplace.verify.verify_signature`: chain, dates, CRLs), that
``hv:endorser`` names the signing certificate, and that the list has not expired. Each image
then becomes a marketplace entry (:func:`derive_entry`) attributed to the list's endorser.
The endorser signed the list, not our per-entry bytes, so the entry's *signature* is the whole
signed list as received: :func:`verify_listed_entry` verifies the list again and checks that the
entry is exactly what the list says about that image. ``service.submit`` dispatches such
entries there, so uploads, replication and imports all verify the same way.

Image lists carry only SHA-512 while marketplace ids come from SHA-1: when a list lacks
``sl:checksum:sha1`` (ours carry it), the image is fetched once from ``hv:uri`` to compute the
other digests, and its size and SHA-512 are checked on the way.

**Export.** :func:`export_image_list` turns entries into a list signed the way ``openssl smime
-sign`` does (text mode, CRLF canonical, SHA-256), which ``openssl smime -verify`` accepts.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import email.parser
import email.policy
import hashlib
import itertools
import json
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from stratuslab.errors import Conflict, InvalidInput, StratusError, VerificationError
from stratuslab.marketplace.certs import SigningKey
from stratuslab.marketplace.cms import detach
from stratuslab.marketplace.ids import identifier_from_sha1
from stratuslab.marketplace.metadata import (
    Checksums,
    Endorser,
    ImageMetadata,
    canonical_bytes,
    describe_errors,
    parse_metadata,
    validate_metadata,
)
from stratuslab.marketplace.truststore import TrustStore
from stratuslab.marketplace.verify import VerifiedEntry, VerifiedSignature, verify_signature

#: extension keys of entries made from an image list
EXT_LIST = "imagelist:identifier"
EXT_VERSION = "imagelist:version"
EXT_IMAGE = "imagelist:image"
DEFAULT_LIST_VALIDITY = timedelta(days=28)
MAX_LIST_BYTES = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
_OWN_NAMESPACES = ("dc:", "hv:", "sl:")
_EXTENSION_RE = re.compile(r"^[a-z][a-z0-9.-]*:[A-Za-z0-9_.-]+$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FORMAT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
_HINT = "image lists are S/MIME signed JSON (hepixvmitrust, vmcatcher_endorser, AppDB)"
_SMIME_WRAPPER = (
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n"
)


# -- the document --------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcTime = Annotated[datetime, AfterValidator(_utc)]
Sha512 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{128}$", to_lower=True)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
Sha1 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{40}$", to_lower=True)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class _Hepix(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="allow", populate_by_name=True, coerce_numbers_to_str=True
    )


class X509Endorser(_Hepix):
    dn: NonEmpty = Field(alias="hv:dn")
    ca: NonEmpty = Field(alias="hv:ca")
    email: str | None = Field(default=None, alias="hv:email")
    creator: str | None = Field(default=None, alias="dc:creator")


class ListEndorser(_Hepix):
    x509: X509Endorser = Field(alias="hv:x509")


class ListImage(_Hepix):
    """One ``hv:image``; unknown keys (``ad:*`` from AppDB...) are kept in ``model_extra``."""

    identifier: NonEmpty = Field(alias="dc:identifier")
    uri: NonEmpty = Field(alias="hv:uri")
    size: int = Field(alias="hv:size", ge=0)
    sha512: Sha512 = Field(alias="sl:checksum:sha512")
    sha1: Sha1 | None = Field(default=None, alias="sl:checksum:sha1")
    sha256: Sha256 | None = Field(default=None, alias="sl:checksum:sha256")
    title: str | None = Field(default=None, alias="dc:title")
    description: str | None = Field(default=None, alias="dc:description")
    version: str | None = Field(default=None, alias="hv:version")
    arch: str | None = Field(default=None, alias="sl:arch")
    os: str | None = Field(default=None, alias="sl:os")
    osversion: str | None = Field(default=None, alias="sl:osversion")
    comments: str | None = Field(default=None, alias="sl:comments")
    hypervisor: str | list[str] | None = Field(default=None, alias="hv:hypervisor")
    format: str | None = Field(default=None, alias="hv:format")


class ImageItem(_Hepix):
    image: ListImage = Field(alias="hv:image")


class ImageList(_Hepix):
    """The ``hv:imagelist`` object; the mandatory fields are those atrope enforces."""

    identifier: NonEmpty = Field(alias="dc:identifier")
    title: str = Field(alias="dc:title")
    description: str = Field(alias="dc:description")
    created: UtcTime = Field(alias="dc:date:created")
    expires: UtcTime = Field(alias="dc:date:expires")
    source: str = Field(alias="dc:source")
    version: NonEmpty = Field(alias="hv:version")
    uri: str = Field(alias="hv:uri")
    endorser: ListEndorser = Field(alias="hv:endorser")
    images: list[ImageItem] = Field(alias="hv:images")


def parse_image_list(content: bytes) -> ImageList:
    """Parse the JSON of an image list (the signed content); errors name the field."""
    try:
        document = json.loads(content.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the image list is not UTF-8: {exc.reason}", hint=_HINT) from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the image list is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint=_HINT,
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get("hv:imagelist"), dict):
        raise InvalidInput(
            'the image list is not a JSON object with an "hv:imagelist" object', hint=_HINT
        )
    try:
        return ImageList.model_validate(document["hv:imagelist"])
    except ValidationError as exc:
        raise InvalidInput(
            "invalid image list: " + describe_errors(exc),
            hint="fix the named fields of hv:imagelist",
            details={"fields": [".".join(map(str, e["loc"])) for e in exc.errors()]},
        ) from exc


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order ``hv:version`` strings: numbers numerically (``1.10`` > ``1.9``), words by text."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p.lower()) for p in parts)


def is_newer(version: str, than: str) -> bool:
    new, old = version_key(version), version_key(than)
    if not new or not old:
        return version > than
    return new > old


# -- S/MIME --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedParts:
    """What an S/MIME message signs: candidate content bytes (as written, then CRLF
    canonical) and a detached DER signature."""

    contents: tuple[bytes, ...]
    signature: bytes


def is_smime(data: bytes) -> bool:
    """Whether ``data`` starts like a MIME message (the evidence of a listed entry)."""
    start = data.lstrip()[:40].lower()
    return start.startswith((b"mime-version:", b"content-type:"))


def split_smime(message: bytes) -> SignedParts:
    """The signed content and detached signature of an S/MIME message, or of a bare CMS
    (DER or PEM) that embeds its content."""
    stripped = message.lstrip()
    if stripped.startswith(b"{"):
        raise VerificationError(
            "the image list is not signed (plain JSON)",
            hint="subscribe to the signed list (S/MIME), as published by its endorser",
        )
    if not is_smime(stripped):
        return _opaque(stripped)
    headers, body = _split_head(stripped)
    media_type = headers.get_content_type()
    if media_type == "multipart/signed":
        return _multipart_signed(headers, body)
    if media_type in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        return _opaque(_decode(body, headers.get("content-transfer-encoding", "base64")))
    raise VerificationError(
        f"the image list is a {media_type} message, not an S/MIME signed one", hint=_HINT
    )


def _split_head(data: bytes) -> tuple[email.message.Message, bytes]:
    match = re.search(rb"\r?\n\r?\n", data)
    if match is None:
        raise VerificationError("the S/MIME message has no body", hint=_HINT)
    head = data[: match.start()] + b"\r\n"
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    return parsed, data[match.end() :]


def _multipart_signed(headers: email.message.Message, body: bytes) -> SignedParts:
    boundary = headers.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise VerificationError("the multipart/signed message has no boundary", hint=_HINT)
    delimiter = re.compile(
        rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r?\n|$)"
    )
    marks = list(delimiter.finditer(body))
    parts = [body[a.end() : b.start()] for a, b in itertools.pairwise(marks) if not a.group(1)]
    if len(parts) != 2:
        raise VerificationError(
            f"a multipart/signed message has 2 parts (content, signature), this one {len(parts)}",
            hint=_HINT,
        )
    content, signature_part = parts
    sig_headers, sig_body = _split_head(signature_part)
    encoding = sig_headers.get("content-transfer-encoding", "base64")
    signature = _decode(sig_body, encoding)
    contents = (content, _crlf(content)) if _crlf(content) != content else (content,)
    return SignedParts(contents, signature)


def _decode(body: bytes, encoding: str) -> bytes:
    if encoding.strip().lower() != "base64":
        return body
    try:
        return base64.b64decode(re.sub(rb"\s+", b"", body), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(f"the signature is not valid base64: {exc}", hint=_HINT) from exc


def _opaque(der: bytes) -> SignedParts:
    content, detached = detach(der)
    if content is None:
        raise VerificationError(
            "the signature carries no content: a detached signature needs its multipart/signed "
            "message",
            hint=_HINT,
        )
    return SignedParts((content,), detached)


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def _json_body(content: bytes) -> bytes:
    """The JSON of a signed part that may carry MIME part headers (``openssl smime -text``)."""
    if content.lstrip()[:1] in (b"{", b"\xef"):
        return content
    _headers, body = _split_head(content)
    return body


def wrap_opaque(der: bytes) -> bytes:
    """An opaque S/MIME message around a CMS that embeds its content."""
    encoded = base64.encodebytes(der).replace(b"\n", b"\r\n")
    return _SMIME_WRAPPER + encoded


# -- verification --------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedImageList:
    document: ImageList
    endorser: Endorser
    #: the signed message exactly as received (an S/MIME message)
    message: bytes
    chain: tuple[x509.Certificate, ...]

    def image(self, identifier: str) -> ListImage:
        found = [i.image for i in self.document.images if i.image.identifier == identifier]
        if len(found) != 1:
            how = "does not contain" if not found else f"lists {len(found)} times"
            raise VerificationError(
                f"image list {self.document.identifier} version {self.document.version} "
                f"{how} image {identifier}",
                hint="the entry does not belong to this image list",
            )
        return found[0]


def verify_image_list(
    message: bytes,
    trust: TrustStore,
    *,
    at: datetime,
    require_crls: bool = False,
) -> VerifiedImageList:
    """Verify an S/MIME signed image list at ``at``: signature, endorser, expiry."""
    if len(message) > MAX_LIST_BYTES:
        raise InvalidInput(
            f"the image list has {len(message)} bytes, more than {MAX_LIST_BYTES}",
            hint="this is not an image list",
        )
    parts = split_smime(message)
    content, verified = _verify_any(parts, trust, at=at, require_crls=require_crls)
    document = parse_image_list(_json_body(content))
    _check_list_endorser(document, verified.endorser)
    if _utc(at) >= document.expires:
        raise VerificationError(
            f"image list {document.identifier} version {document.version} expired at "
            f"{_iso(document.expires)}",
            hint="the endorser must publish a new version of the list",
            code="image_list_expired",
        )
    if not is_smime(message):
        message = wrap_opaque(message.strip())
    return VerifiedImageList(document, verified.endorser, message, verified.chain)


def _verify_any(
    parts: SignedParts, trust: TrustStore, *, at: datetime, require_crls: bool
) -> tuple[bytes, VerifiedSignature]:
    first: VerificationError | None = None
    for content in parts.contents:
        try:
            verified = verify_signature(
                content, parts.signature, trust, at=_utc(at), require_crls=require_crls
            )
        except VerificationError as exc:
            first = first or exc
            continue
        return content, verified
    assert first is not None
    raise first


def _same_dn(a: str, b: str) -> bool:
    return a == b or a.replace(", ", ",").casefold() == b.replace(", ", ",").casefold()


def _check_list_endorser(document: ImageList, endorser: Endorser) -> None:
    named = document.endorser.x509
    if not _same_dn(named.dn, endorser.subject) or not _same_dn(named.ca, endorser.issuer):
        raise VerificationError(
            f"image list {document.identifier} names endorser {named.dn} (CA {named.ca}) but "
            f"is signed by {endorser.subject} (CA {endorser.issuer})",
            hint="hv:endorser must describe the certificate that signs the list",
        )


def verify_listed_entry(
    metadata_bytes: bytes,
    message: bytes,
    trust: TrustStore,
    *,
    at: datetime,
    require_crls: bool = False,
) -> VerifiedEntry:
    """Verify an entry made from an image list, whose evidence is the signed list."""
    listed = verify_image_list(message, trust, at=at, require_crls=require_crls)
    metadata = parse_metadata(metadata_bytes)
    image_id = metadata.extensions.get(EXT_IMAGE)
    if not isinstance(image_id, str):
        raise VerificationError(
            f"the entry is signed by an image list but has no {EXT_IMAGE} extension",
            hint="entries signed by an image list are made with stratus imagelist import",
        )
    image = listed.image(image_id)
    expected = derive_entry(
        listed, image, checksums=metadata.checksums, image_format=metadata.format
    )
    if canonical_bytes(expected) != metadata_bytes:
        differ = sorted(
            name
            for name in ImageMetadata.model_fields
            if getattr(expected, name) != getattr(metadata, name)
        )
        raise VerificationError(
            f"the entry does not say what image list {listed.document.identifier} version "
            f"{listed.document.version} says about image {image_id}: {', '.join(differ)} differ",
            hint="the entry was changed after import, or belongs to another list version",
        )
    return VerifiedEntry(expected, listed.endorser, metadata_bytes, listed.message, listed.chain)


# -- image list -> entries -----------------------------------------------------------------


def derive_entry(
    listed: VerifiedImageList,
    image: ListImage,
    *,
    checksums: Checksums,
    image_format: str | None = None,
) -> ImageMetadata:
    """The marketplace entry for one image of a verified list.

    ``checksums`` must agree with every digest the list gives (SHA-512 always); the others
    (SHA-1 for the identifier) come from the image itself. ``image_format`` is used when the
    list has no ``hv:format``.
    """
    document = listed.document
    _check_digests(image, checksums)
    fmt = _format(image.format) if image.format is not None else image_format or "raw"
    extensions: dict[str, Any] = {
        EXT_LIST: document.identifier,
        EXT_VERSION: document.version,
        EXT_IMAGE: image.identifier,
    }
    for key, value in sorted((image.model_extra or {}).items()):
        if _EXTENSION_RE.fullmatch(key) and not key.startswith(_OWN_NAMESPACES):
            extensions[key] = value
    title = image.title or None
    return validate_metadata(
        {
            "identifier": identifier_from_sha1(checksums.sha1),
            "bytes": image.size,
            "checksums": checksums,
            "format": fmt,
            "os": image.os or None,
            "os_version": image.osversion or None,
            "os_arch": image.arch or None,
            "hypervisor": _hypervisor(image.hypervisor),
            "title": title[:255] if title else None,
            "description": (
                image.description or image.title or f"image {image.identifier} of {document.title}"
            )[:4096],
            "created": document.created,
            "valid_until": document.expires,
            "version": image.version[:255] if image.version else None,
            "locations": [image.uri],
            "tags": [image.identifier] if _TAG_RE.fullmatch(image.identifier) else [],
            "endorser": listed.endorser,
            "extensions": extensions,
        }
    )


def _check_digests(image: ListImage, checksums: Checksums) -> None:
    given = {"sha512": image.sha512, "sha1": image.sha1, "sha256": image.sha256}
    for name, value in given.items():
        actual = getattr(checksums, name)
        if value is not None and actual != value:
            raise VerificationError(
                f"image {image.identifier}: {name} {actual} does not match the list's {value}",
                hint="the image at hv:uri is not the one the endorser listed",
                code="checksum_mismatch",
            )


def _format(text: str) -> str:
    fmt = text.strip().lower()
    if not _FORMAT_RE.fullmatch(fmt):
        raise InvalidInput(f"hv:format {text!r} is not a disk format name", hint="e.g. qcow2")
    return fmt


def _hypervisor(value: str | list[str] | None) -> str | None:
    if isinstance(value, list):
        value = ",".join(value)
    return value[:255] if value else None


# -- fetching images for their digests -----------------------------------------------------

Fetcher = Callable[[ListImage], tuple[Checksums, str]]


def open_location(uri: str, *, http: httpx.Client | None = None) -> Iterator[bytes]:
    """Stream the bytes at an ``http(s)://`` or ``file://`` URI (or a local path)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        client = http or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        try:
            with client.stream("GET", uri, follow_redirects=True) as response:
                if response.status_code >= 400:
                    raise InvalidInput(
                        f"GET {uri} failed: HTTP {response.status_code}",
                        hint="check the URL",
                        code="unreachable_location",
                    )
                yield from response.iter_bytes(_CHUNK)
        except httpx.HTTPError as exc:
            raise InvalidInput(
                f"cannot fetch {uri}: {exc}", hint="check the URL", code="unreachable_location"
            ) from exc
        finally:
            if http is None:
                client.close()
        return
    path = Path(unquote(parts.path)) if parts.scheme == "file" else Path(uri)
    if parts.scheme not in ("file", ""):
        raise InvalidInput(
            f"cannot fetch {uri}: scheme {parts.scheme} is not supported",
            hint="use http, https or file URLs",
            code="unreachable_location",
        )
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                yield chunk
    except OSError as exc:
        raise InvalidInput(
            f"cannot read {uri}: {exc.strerror}", hint="check the path", code="unreachable_location"
        ) from exc


def read_location(uri: str, *, http: httpx.Client | None = None, limit: int) -> bytes:
    data = bytearray()
    for chunk in open_location(uri, http=http):
        data += chunk
        if len(data) > limit:
            raise InvalidInput(f"{uri} is larger than {limit} bytes", hint="check the URL")
    return bytes(data)


def fetching_digests(http: httpx.Client | None = None) -> Fetcher:
    """A fetcher that downloads each image once, checking its size and SHA-512."""

    def fetch(image: ListImage) -> tuple[Checksums, str]:
        hashers = {name: hashlib.new(name) for name in ("md5", "sha1", "sha256", "sha512")}
        size, head = 0, b""
        for chunk in open_location(image.uri, http=http):
            if len(head) < 4:
                head += chunk[:4]
            size += len(chunk)
            if size > image.size:
                break
            for hasher in hashers.values():
                hasher.update(chunk)
        if size != image.size:
            more = "more than " if size > image.size else ""
            raise VerificationError(
                f"image {image.identifier} at {image.uri} has {more}{size} bytes, the list "
                f"says {image.size}",
                hint="the image at hv:uri is not the one the endorser listed",
                code="checksum_mismatch",
            )
        checksums = Checksums(**{name: h.hexdigest() for name, h in hashers.items()})
        return checksums, "qcow2" if head.startswith(b"QFI\xfb") else "raw"

    return fetch


def _checksums_for(image: ListImage, fetcher: Fetcher | None) -> tuple[Checksums, str | None]:
    if image.sha1 is not None:
        return Checksums(sha1=image.sha1, sha256=image.sha256, sha512=image.sha512), None
    if fetcher is None:
        raise InvalidInput(
            f"image {image.identifier} has no sl:checksum:sha1 and fetching images is off",
            hint="allow fetching the images (their SHA-1 gives the marketplace id)",
        )
    return fetcher(image)


# -- import --------------------------------------------------------------------------------

Outcome = Literal["stored", "held", "skipped"]


class EntrySink(Protocol):
    """Where verified bytes go: a marketplace, in process or over HTTP."""

    def put(self, metadata: bytes, signature: bytes) -> Outcome: ...


@dataclass
class ImportReport:
    list_identifier: str
    version: str
    endorser: str
    stored: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ImageListState:
    """The newest version imported of each list (by ``dc:identifier``), in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"cannot read the image list state {self.path}: {exc}",
                hint="fix or remove the file (it only remembers the versions imported)",
            ) from exc
        return data if isinstance(data, dict) else {}

    def check_newer(self, document: ImageList) -> None:
        last = self.read().get(document.identifier)
        if last is not None and not is_newer(document.version, last["version"]):
            raise Conflict(
                f"image list {document.identifier} version {document.version} is not newer "
                f"than version {last['version']} imported on {last.get('imported_at', '?')}",
                hint="the endorser must publish a list with a higher hv:version",
                code="stale_image_list",
            )

    def record(self, document: ImageList, *, source: str, at: datetime) -> None:
        with self._lock:
            data = self.read()
            data[document.identifier] = {
                "version": document.version,
                "source": source,
                "endorser": document.endorser.x509.dn,
                "imported_at": _iso(at),
                "expires": _iso(document.expires),
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".imagelists-")
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=2, sort_keys=True)
            os.replace(tmp, self.path)


def import_image_list(
    message: bytes,
    sink: EntrySink,
    trust: TrustStore,
    *,
    at: datetime,
    source: str = "",
    state: ImageListState | None = None,
    fetcher: Fetcher | None = None,
    require_crls: bool = False,
) -> ImportReport:
    """Verify a signed list and put one entry per image into ``sink``.

    Refuses an expired list, and (with ``state``) a version not newer than the last one
    imported. Images are independent: one that cannot be fetched or fails its checksum is
    reported in ``failed`` and the others go on; the version is recorded only when none
    failed, so the same version can be imported again after a fix.
    """
    listed = verify_image_list(message, trust, at=at, require_crls=require_crls)
    document = listed.document
    if state is not None:
        state.check_newer(document)
    report = ImportReport(document.identifier, document.version, listed.endorser.key)
    if source and document.uri and document.uri != source:
        report.warnings.append(f"the list says it is published at {document.uri}, not {source}")
    for item in document.images:
        image = item.image
        try:
            checksums, sniffed = _checksums_for(image, fetcher)
            entry = derive_entry(listed, image, checksums=checksums, image_format=sniffed)
            outcome = sink.put(canonical_bytes(entry), listed.message)
        except StratusError as exc:
            report.failed.append((image.identifier, exc.message))
            continue
        getattr(report, outcome).append(image.identifier)
    if state is not None and not report.failed:
        state.record(document, source=source, at=at)
    return report


# -- entries -> image list -----------------------------------------------------------------


def image_uuid(metadata: ImageMetadata) -> str:
    """The ``dc:identifier`` of an entry's image in a list: kept from an imported list, else
    stable per tag series (so a newer image of the series is an update), else per image."""
    imported = metadata.extensions.get(EXT_IMAGE)
    if isinstance(imported, str):
        return imported
    who = metadata.endorser.key if metadata.endorser is not None else ""
    name = f"{who}/{metadata.tags[0]}" if metadata.tags else metadata.identifier
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:stratuslab:marketplace:{name}"))


def list_image(metadata: ImageMetadata) -> dict[str, Any]:
    """One ``hv:image`` for an entry (it needs SHA-512, a location and no compression)."""
    problem = None
    if metadata.checksums.sha512 is None:
        problem = "has no SHA-512 checksum (sl:checksum:sha512 is mandatory)"
    elif not metadata.locations:
        problem = "has no location (hv:uri is mandatory)"
    elif metadata.compression is not None:
        problem = (
            f"is stored {metadata.compression}-compressed; subscribers check "
            "sl:checksum:sha512 on the file they download, which is the uncompressed image's"
        )
    if problem is not None:
        raise InvalidInput(
            f"entry for image {metadata.identifier} {problem}",
            hint="endorse an uncompressed image with its SHA-512 and a download location",
        )
    image: dict[str, Any] = {
        "dc:identifier": image_uuid(metadata),
        "dc:title": metadata.title or metadata.identifier,
        "dc:description": metadata.description,
        "hv:uri": metadata.locations[0],
        "hv:size": metadata.bytes,
        "hv:version": metadata.version or metadata.identifier,
        "hv:format": metadata.format,
        "sl:checksum:sha512": metadata.checksums.sha512,
        "sl:checksum:sha1": metadata.checksums.sha1,
        "sl:identifier": metadata.identifier,
        "sl:comments": metadata.deprecated or "",
    }
    optional = {
        "sl:checksum:sha256": metadata.checksums.sha256,
        "sl:arch": metadata.os_arch,
        "sl:os": metadata.os,
        "sl:osversion": metadata.os_version,
        "hv:hypervisor": metadata.hypervisor,
    }
    image.update({k: v for k, v in optional.items() if v is not None})
    for key, value in metadata.extensions.items():
        if key.startswith("ad:"):
            image.setdefault(key, value)
    return {"hv:image": image}


def build_image_list(
    entries: Sequence[ImageMetadata],
    endorser: SigningKey,
    *,
    identifier: str,
    version: str,
    title: str,
    description: str,
    uri: str,
    source: str = "",
    created: datetime,
    expires: datetime | None = None,
) -> dict[str, Any]:
    """The JSON document of an image list of ``entries`` (signed by ``endorser``)."""
    expires = expires or created + DEFAULT_LIST_VALIDITY
    if expires <= created:
        raise InvalidInput("the list must expire after it is created", hint="check --expires")
    who = endorser.endorser
    x509_block = {"hv:dn": who.subject, "hv:ca": who.issuer, "dc:creator": _common_name(endorser)}
    if who.email is not None:
        x509_block["hv:email"] = who.email
    document = {
        "dc:identifier": identifier,
        "dc:title": title,
        "dc:description": description,
        "dc:date:created": _iso(created),
        "dc:date:expires": _iso(expires),
        "dc:source": source or uri,
        "hv:version": version,
        "hv:uri": uri,
        "hv:endorser": {"hv:x509": x509_block},
        "hv:images": [list_image(e) for e in entries],
    }
    return {"hv:imagelist": document}


def _common_name(key: SigningKey) -> str:
    names = key.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else key.endorser.subject
    return value.decode() if isinstance(value, bytes) else value


def sign_image_list(document: dict[str, Any], key: SigningKey) -> bytes:
    """The S/MIME ``multipart/signed`` message of a list (what ``openssl smime -sign``
    makes: text mode, content canonicalized to CRLF, detached PKCS#7, SHA-256)."""
    text = json.dumps(document, indent=4, ensure_ascii=False) + "\n"
    builder = pkcs7.PKCS7SignatureBuilder().set_data(text.encode("utf-8"))
    builder = builder.add_signer(key.certificate, key.private_key, hashes.SHA256())
    for cert in key.chain:
        builder = builder.add_certificate(cert)
    return builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])


def export_image_list(
    entries: Sequence[ImageMetadata],
    key: SigningKey,
    *,
    identifier: str | None = None,
    version: str,
    title: str,
    description: str,
    uri: str,
    source: str = "",
    created: datetime | None = None,
    expires: datetime | None = None,
) -> bytes:
    """Entries as a signed image list (S/MIME), ready to publish at ``uri``."""
    if not entries:
        raise InvalidInput("an image list needs at least one image", hint="pass entry ids")
    document = build_image_list(
        entries,
        key,
        identifier=identifier or str(uuid.uuid4()),
        version=version,
        title=title,
        description=description,
        uri=uri,
        source=source,
        created=(created or datetime.now(UTC)).replace(microsecond=0),
        expires=expires,
    )
    return sign_image_list(document, key)


def _iso(value: datetime) -> str:
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")
