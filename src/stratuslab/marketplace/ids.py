"""Marketplace image identifiers, compatible with the original StratusLab ones.

An identifier is the image's SHA-1 taken as a 160-bit integer, left-padded with two zero bits
to 162 bits and written with the base64url alphabet, 6 bits per character, most significant
first: 27 characters, the first always one of ``A``-``P``::

    c319bbd5afc0a22ba3eaed0507c39383ec28eeff  <->  MMZu9WvwKIro-rtBQfDk4PsKO7_

(This is *not* ``base64.urlsafe_b64encode`` of the digest, which groups bits from the left and
pads on the right.)
"""

from __future__ import annotations

import re

from stratuslab.errors import InvalidInput

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
IDENTIFIER_LENGTH = 27
IDENTIFIER_RE = re.compile(r"^[A-P][A-Za-z0-9_-]{26}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_VALUES = {char: value for value, char in enumerate(ALPHABET)}
_BITS = 6


def is_identifier(text: str) -> bool:
    """Whether ``text`` has the shape of a marketplace identifier."""
    return IDENTIFIER_RE.fullmatch(text) is not None


def identifier_from_digest(digest: bytes) -> str:
    """The identifier of a raw 20-byte SHA-1 digest."""
    if len(digest) != 20:
        raise InvalidInput(
            f"a SHA-1 digest has 20 bytes, got {len(digest)}",
            hint="pass hashlib.sha1(...).digest()",
        )
    number = int.from_bytes(digest, "big")
    chars = (
        ALPHABET[(number >> (_BITS * shift)) & 0x3F]
        for shift in range(IDENTIFIER_LENGTH - 1, -1, -1)
    )
    return "".join(chars)


def identifier_from_sha1(sha1_hex: str) -> str:
    """The identifier of a SHA-1 given as 40 hex digits (either case)."""
    normalized = sha1_hex.strip().lower()
    if SHA1_RE.fullmatch(normalized) is None:
        raise InvalidInput(
            f"{sha1_hex!r} is not a SHA-1 checksum",
            hint="a SHA-1 checksum is 40 hexadecimal digits",
        )
    return identifier_from_digest(bytes.fromhex(normalized))


def sha1_from_identifier(identifier: str) -> str:
    """The SHA-1 (40 lowercase hex digits) an identifier encodes."""
    if not is_identifier(identifier):
        raise InvalidInput(
            f"{identifier!r} is not a marketplace image identifier",
            hint="an identifier is 27 characters of A-Z a-z 0-9 - _, the first one of A-P",
        )
    number = 0
    for char in identifier:
        number = (number << _BITS) | _VALUES[char]
    return f"{number:040x}"
