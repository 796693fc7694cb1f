from __future__ import annotations

import hashlib

import pytest

from stratuslab.errors import InvalidInput
from stratuslab.marketplace.ids import (
    identifier_from_digest,
    identifier_from_sha1,
    is_identifier,
    sha1_from_identifier,
)

SHA1 = "c319bbd5afc0a22ba3eaed0507c39383ec28eeff"
IDENTIFIER = "MMZu9WvwKIro-rtBQfDk4PsKO7_"


def test_original_example_encodes() -> None:
    assert identifier_from_sha1(SHA1) == IDENTIFIER
    assert identifier_from_sha1(SHA1.upper()) == IDENTIFIER


def test_original_example_decodes() -> None:
    assert sha1_from_identifier(IDENTIFIER) == SHA1


@pytest.mark.parametrize(
    ("sha1", "identifier"),
    [("0" * 40, "A" * 27), ("f" * 40, "P" + "_" * 26)],
)
def test_extremes(sha1: str, identifier: str) -> None:
    assert identifier_from_sha1(sha1) == identifier
    assert sha1_from_identifier(identifier) == sha1


@pytest.mark.parametrize("seed", range(50))
def test_round_trip(seed: int) -> None:
    digest = hashlib.sha1(str(seed).encode()).digest()
    identifier = identifier_from_digest(digest)
    assert is_identifier(identifier)
    assert identifier[0] in "ABCDEFGHIJKLMNOP"
    assert sha1_from_identifier(identifier) == digest.hex()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "MMZu9WvwKIro-rtBQfDk4PsKO7",
        "MMZu9WvwKIro-rtBQfDk4PsKO7__",
        "QMZu9WvwKIro-rtBQfDk4PsKO7_",
        "MMZu9WvwKIro+rtBQfDk4PsKO7_",
        "MMZu9WvwKIro=rtBQfDk4PsKO7_",
    ],
)
def test_invalid_identifiers(bad: str) -> None:
    assert not is_identifier(bad)
    with pytest.raises(InvalidInput, match="not a marketplace image identifier"):
        sha1_from_identifier(bad)


@pytest.mark.parametrize("bad", ["", "xyz", "c319bbd5afc0a22ba3eaed0507c39383ec28eef", "g" * 40])
def test_invalid_sha1(bad: str) -> None:
    with pytest.raises(InvalidInput, match="is not a SHA-1 checksum"):
        identifier_from_sha1(bad)


def test_digest_must_be_20_bytes() -> None:
    with pytest.raises(InvalidInput, match="20 bytes, got 32"):
        identifier_from_digest(hashlib.sha256(b"").digest())
