"""HEPiX image lists: read, verify and import them (the entry point of the image list code).

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

The rest lives next door and is re-exported here: the document model
(:mod:`~stratuslab.marketplace.imagelist_doc`), S/MIME handling
(:mod:`~stratuslab.marketplace.smime`), fetching images for their digests
(:mod:`~stratuslab.marketplace.imagelist_fetch`) and export, entries as a signed list
(:mod:`~stratuslab.marketplace.imagelist_export`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509

from stratuslab.errors import Conflict, InvalidInput, StratusError, VerificationError
from stratuslab.marketplace.ids import identifier_from_sha1
from stratuslab.marketplace.imagelist_doc import (
    EXT_IMAGE,
    EXT_LIST,
    EXT_VERSION,
    ImageItem,
    ImageList,
    ListEndorser,
    ListImage,
    NonEmpty,
    Sha1,
    Sha256,
    Sha512,
    UtcTime,
    X509Endorser,
    is_newer,
    iso_utc,
    parse_image_list,
    utc,
    version_key,
)
from stratuslab.marketplace.imagelist_export import (
    DEFAULT_LIST_VALIDITY,
    build_image_list,
    export_image_list,
    image_uuid,
    list_image,
    sign_image_list,
)
from stratuslab.marketplace.imagelist_fetch import (
    Fetcher,
    checksums_for,
    fetching_digests,
    open_location,
    read_location,
)
from stratuslab.marketplace.metadata import (
    Checksums,
    Endorser,
    ImageMetadata,
    canonical_bytes,
    parse_metadata,
    validate_metadata,
)
from stratuslab.marketplace.smime import (
    SignedParts,
    is_smime,
    json_body,
    split_smime,
    wrap_opaque,
)
from stratuslab.marketplace.truststore import TrustStore
from stratuslab.marketplace.verify import VerifiedEntry, VerifiedSignature, verify_signature

__all__ = [
    "DEFAULT_LIST_VALIDITY",
    "EXT_IMAGE",
    "EXT_LIST",
    "EXT_VERSION",
    "MAX_LIST_BYTES",
    "EntrySink",
    "Fetcher",
    "ImageItem",
    "ImageList",
    "ImageListState",
    "ImportReport",
    "ListEndorser",
    "ListImage",
    "NonEmpty",
    "Outcome",
    "Sha1",
    "Sha256",
    "Sha512",
    "SignedParts",
    "UtcTime",
    "VerifiedImageList",
    "X509Endorser",
    "build_image_list",
    "derive_entry",
    "export_image_list",
    "fetching_digests",
    "image_uuid",
    "import_image_list",
    "is_newer",
    "is_smime",
    "list_image",
    "open_location",
    "parse_image_list",
    "read_location",
    "sign_image_list",
    "split_smime",
    "verify_image_list",
    "verify_listed_entry",
    "version_key",
    "wrap_opaque",
]

MAX_LIST_BYTES = 16 * 1024 * 1024
_OWN_NAMESPACES = ("dc:", "hv:", "sl:")
_EXTENSION_RE = re.compile(r"^[a-z][a-z0-9.-]*:[A-Za-z0-9_.-]+$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FORMAT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")


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
    document = parse_image_list(json_body(content))
    _check_list_endorser(document, verified.endorser)
    if utc(at) >= document.expires:
        raise VerificationError(
            f"image list {document.identifier} version {document.version} expired at "
            f"{iso_utc(document.expires)}",
            hint="the endorser must publish a new version of the list",
            code="image_list_expired",
        )
    if not is_smime(message):
        message = wrap_opaque(message)
    return VerifiedImageList(document, verified.endorser, message, verified.chain)


def _verify_any(
    parts: SignedParts, trust: TrustStore, *, at: datetime, require_crls: bool
) -> tuple[bytes, VerifiedSignature]:
    first: VerificationError | None = None
    for content in parts.contents:
        try:
            verified = verify_signature(
                content, parts.signature, trust, at=utc(at), require_crls=require_crls
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
                "imported_at": iso_utc(at),
                "expires": iso_utc(document.expires),
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
            checksums, sniffed = checksums_for(image, fetcher)
            entry = derive_entry(listed, image, checksums=checksums, image_format=sniffed)
            outcome = sink.put(canonical_bytes(entry), listed.message)
        except StratusError as exc:
            report.failed.append((image.identifier, exc.message))
            continue
        getattr(report, outcome).append(image.identifier)
    if state is not None and not report.failed:
        state.record(document, source=source, at=at)
    return report
