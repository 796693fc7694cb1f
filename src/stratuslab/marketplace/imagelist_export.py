"""Exporting marketplace entries as a signed HEPiX image list.

:func:`export_image_list` turns entries into a list signed the way ``openssl smime -sign``
does (text mode, CRLF canonical, SHA-256), which ``openssl smime -verify`` accepts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from stratuslab.errors import InvalidInput
from stratuslab.marketplace.certs import SigningKey
from stratuslab.marketplace.imagelist_doc import EXT_IMAGE, iso_utc
from stratuslab.marketplace.metadata import ImageMetadata

DEFAULT_LIST_VALIDITY = timedelta(days=28)


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
        "dc:date:created": iso_utc(created),
        "dc:date:expires": iso_utc(expires),
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
