"""Reading CMS (PKCS#7) SignedData structures; the only module that imports ``asn1crypto``.

Parsing only: what was signed and by whom, as plain typed values. The cryptographic checks
live in :mod:`stratuslab.marketplace.verify`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms  # type: ignore[import-untyped]
from cryptography import x509

from stratuslab.errors import VerificationError

_PEM_RE = re.compile(rb"-----BEGIN (?:PKCS7|CMS)-----(.*?)-----END (?:PKCS7|CMS)-----", re.S)
_HINT = "sign with stratuslab.marketplace.sign() or `openssl cms -sign -binary -outform DER`"


@dataclass(frozen=True)
class SignerInfo:
    """One signer of a SignedData, as plain values."""

    issuer_der: bytes | None
    serial_number: int | None
    key_identifier: bytes | None
    digest_algorithm: str
    signature_algorithm: str
    pss_salt_length: int | None
    signature: bytes
    signed_attrs: bytes | None
    content_type: str | None
    message_digest: bytes | None


@dataclass(frozen=True)
class SignedData:
    certificates: tuple[x509.Certificate, ...]
    signers: tuple[SignerInfo, ...]
    detached: bool


def parse_signed_data(signature: bytes) -> SignedData:
    """Parse a DER (or PEM-armoured) CMS SignedData; refuse anything else."""
    der = dearmor(signature)
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise VerificationError(
                f"the signature is a CMS {info['content_type'].native}, not signed data",
                hint=_HINT,
            )
        content = info["content"]
        return SignedData(
            certificates=_certificates(content),
            signers=tuple(_signer(s) for s in content["signer_infos"]),
            detached=content["encap_content_info"]["content"].native is None,
        )
    except VerificationError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise VerificationError(
            f"the signature is not a valid CMS/PKCS#7 structure: {exc}", hint=_HINT
        ) from exc


def dearmor(signature: bytes) -> bytes:
    """The DER of a PEM-armoured CMS; DER comes back unchanged."""
    match = _PEM_RE.search(signature)
    if match is None:
        return signature
    try:
        return base64.b64decode(match.group(1), validate=False)
    except binascii.Error as exc:
        raise VerificationError(f"the PEM signature is not base64: {exc}", hint=_HINT) from exc


def _certificates(content: Any) -> tuple[x509.Certificate, ...]:
    certs = []
    for choice in content["certificates"] or ():
        if choice.name == "certificate":
            certs.append(x509.load_der_x509_certificate(choice.chosen.dump()))
    return tuple(certs)


def _signer(info: Any) -> SignerInfo:
    sid = info["sid"]
    issuer_der = serial = key_id = None
    if sid.name == "issuer_and_serial_number":
        issuer_der = sid.chosen["issuer"].dump()
        serial = int(sid.chosen["serial_number"].native)
    else:
        key_id = bytes(sid.chosen.native)
    algorithm = info["signature_algorithm"]
    attrs = info["signed_attrs"]
    has_attrs = bool(attrs.contents)
    return SignerInfo(
        issuer_der=issuer_der,
        serial_number=serial,
        key_identifier=key_id,
        digest_algorithm=str(info["digest_algorithm"]["algorithm"].native),
        signature_algorithm=str(algorithm.signature_algo),
        pss_salt_length=_pss_salt(algorithm),
        signature=bytes(info["signature"].native),
        # The signature covers the attributes DER-encoded as a SET (tag 0x31), not as the
        # [0] IMPLICIT field they are carried in (RFC 5652 section 5.4).
        signed_attrs=b"\x31" + attrs.dump()[1:] if has_attrs else None,
        content_type=_attribute(attrs, "content_type") if has_attrs else None,
        message_digest=_attribute(attrs, "message_digest") if has_attrs else None,
    )


def _pss_salt(algorithm: Any) -> int | None:
    if algorithm.signature_algo != "rsassa_pss":
        return None
    return int(algorithm["parameters"]["salt_length"].native)


def _attribute(attrs: Any, name: str) -> Any:
    values = [a["values"].native for a in attrs if a["type"].native == name]
    if len(values) != 1 or len(values[0]) != 1:
        return None
    return values[0][0]


def detach(signature: bytes) -> tuple[bytes | None, bytes]:
    """Split a SignedData that embeds its content (S/MIME "opaque" signing, ``openssl cms
    -nodetach``) into the content and an equivalent detached signature.

    The signer infos are kept byte for byte, so the signature still verifies over the content.
    A detached signature comes back unchanged with ``None`` content.
    """
    der = dearmor(signature)
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise VerificationError(
                f"the signature is a CMS {info['content_type'].native}, not signed data",
                hint=_HINT,
            )
        signed = info["content"]
        content = signed["encap_content_info"]["content"].native
        if content is None:
            return None, der
        if not isinstance(content, bytes):
            raise VerificationError(
                "the signed content is not plain data", hint="sign the document as data"
            )
        stripped = signed.copy()
        stripped["encap_content_info"] = cms.ContentInfo(
            {"content_type": signed["encap_content_info"]["content_type"].native}
        )
        detached = cms.ContentInfo({"content_type": "signed_data", "content": stripped})
        return content, detached.dump()
    except VerificationError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise VerificationError(
            f"the signature is not a valid CMS/PKCS#7 structure: {exc}", hint=_HINT
        ) from exc
