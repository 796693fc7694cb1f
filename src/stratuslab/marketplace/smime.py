"""S/MIME messages around the CMS signatures of image lists: split and wrap them.

An image list arrives as ``multipart/signed`` (content and a detached PKCS#7), as opaque
``application/pkcs7-mime``, or as a bare CMS (DER or PEM) that embeds its content.
:func:`split_smime` turns each into the content bytes that were signed and a detached DER
signature, which :func:`~stratuslab.marketplace.verify.verify_signature` checks.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import email.parser
import email.policy
import itertools
import re
from dataclasses import dataclass

from stratuslab.errors import VerificationError
from stratuslab.marketplace.cms import dearmor, detach

#: the hint of errors about what an image list should look like
IMAGE_LIST_HINT = "image lists are S/MIME signed JSON (hepixvmitrust, vmcatcher_endorser, AppDB)"
_SMIME_WRAPPER = (
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n"
)


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
        f"the image list is a {media_type} message, not an S/MIME signed one",
        hint=IMAGE_LIST_HINT,
    )


def json_body(content: bytes) -> bytes:
    """The JSON of a signed part that may carry MIME part headers (``openssl smime -text``)."""
    if content.lstrip()[:1] in (b"{", b"\xef"):
        return content
    _headers, body = _split_head(content)
    return body


def wrap_opaque(signature: bytes) -> bytes:
    """An opaque S/MIME message around a CMS (DER, or PEM) that embeds its content. DER is
    kept byte for byte: its last byte may well be a newline or a space."""
    der = dearmor(signature.lstrip())
    encoded = base64.encodebytes(der).replace(b"\n", b"\r\n")
    return _SMIME_WRAPPER + encoded


def _split_head(data: bytes) -> tuple[email.message.Message, bytes]:
    match = re.search(rb"\r?\n\r?\n", data)
    if match is None:
        raise VerificationError("the S/MIME message has no body", hint=IMAGE_LIST_HINT)
    head = data[: match.start()] + b"\r\n"
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    return parsed, data[match.end() :]


def _multipart_signed(headers: email.message.Message, body: bytes) -> SignedParts:
    boundary = headers.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise VerificationError(
            "the multipart/signed message has no boundary", hint=IMAGE_LIST_HINT
        )
    delimiter = re.compile(
        rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r?\n|$)"
    )
    marks = list(delimiter.finditer(body))
    parts = [body[a.end() : b.start()] for a, b in itertools.pairwise(marks) if not a.group(1)]
    if len(parts) != 2:
        raise VerificationError(
            f"a multipart/signed message has 2 parts (content, signature), this one {len(parts)}",
            hint=IMAGE_LIST_HINT,
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
        raise VerificationError(
            f"the signature is not valid base64: {exc}", hint=IMAGE_LIST_HINT
        ) from exc


def _opaque(der: bytes) -> SignedParts:
    content, detached = detach(der)
    if content is None:
        raise VerificationError(
            "the signature carries no content: a detached signature needs its multipart/signed "
            "message",
            hint=IMAGE_LIST_HINT,
        )
    return SignedParts((content,), detached)


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)
