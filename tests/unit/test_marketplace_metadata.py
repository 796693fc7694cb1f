from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from stratuslab import marketplace
from stratuslab.errors import InvalidInput
from stratuslab.marketplace.ids import identifier_from_sha1
from stratuslab.marketplace.metadata import (
    DEFAULT_VALIDITY,
    ImageMetadata,
    build_metadata,
    canonical_bytes,
    parse_metadata,
    schema_json,
    schema_text,
)

CONTENT = b"\x00\x01 boot sector " * 100_000
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SCHEMA_FILE = Path(marketplace.__file__).parent / "metadata.schema.json"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "ttylinux.img"
    path.write_bytes(CONTENT)
    return path


def _meta(image: Path, **fields: object) -> ImageMetadata:
    fields.setdefault("description", "ttylinux 9.7")
    fields.setdefault("format", "raw")
    return build_metadata(image, created=CREATED, **fields)


def test_build_computes_size_checksums_and_identifier(image: Path) -> None:
    meta = _meta(image)
    sha1 = hashlib.sha1(CONTENT).hexdigest()
    assert meta.bytes == len(CONTENT)
    assert meta.checksums.sha1 == sha1
    assert meta.checksums.md5 == hashlib.md5(CONTENT).hexdigest()
    assert meta.checksums.sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert meta.checksums.sha512 == hashlib.sha512(CONTENT).hexdigest()
    assert meta.identifier == identifier_from_sha1(sha1)
    assert meta.valid_until == CREATED + DEFAULT_VALIDITY
    assert meta.created == CREATED


@pytest.mark.parametrize(
    ("suffix", "compress", "name"),
    [(".gz", gzip.compress, "gz"), (".bz2", bz2.compress, "bz2"), (".xz", lzma.compress, "xz")],
)
def test_build_hashes_decompressed_content(
    tmp_path: Path, suffix: str, compress: object, name: str
) -> None:
    path = tmp_path / f"disk.img{suffix}"
    path.write_bytes(compress(CONTENT))  # type: ignore[operator]
    meta = _meta(path)
    assert meta.compression == name
    assert meta.checksums.sha1 == hashlib.sha1(CONTENT).hexdigest()
    assert meta.bytes == len(CONTENT)


def test_build_refuses_corrupt_compressed_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(InvalidInput, match=r"cannot read .* as gz data"):
        _meta(path)


def test_build_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no image file"):
        _meta(tmp_path / "nope.img")


def test_build_identifier_mismatch_names_both(image: Path) -> None:
    wrong = "MMZu9WvwKIro-rtBQfDk4PsKO7_"
    actual = identifier_from_sha1(hashlib.sha1(CONTENT).hexdigest())
    with pytest.raises(InvalidInput) as err:
        _meta(image, identifier=wrong)
    assert wrong in err.value.message
    assert actual in err.value.message


def test_build_checksum_and_size_mismatch(image: Path) -> None:
    with pytest.raises(InvalidInput, match=r"checksums.sha256"):
        _meta(image, checksums={"sha256": "0" * 64})
    with pytest.raises(InvalidInput, match="does not match the file size"):
        _meta(image, bytes=1)


def test_build_refuses_unknown_field(image: Path) -> None:
    with pytest.raises(InvalidInput, match="oss: Extra inputs are not permitted"):
        _meta(image, oss="linux")


def test_model_identifier_must_match_sha1(image: Path) -> None:
    doc = json.loads(canonical_bytes(_meta(image)))
    doc["checksums"]["sha1"] = "c319bbd5afc0a22ba3eaed0507c39383ec28eeff"
    with pytest.raises(InvalidInput) as err:
        parse_metadata(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    assert "c319bbd5afc0a22ba3eaed0507c39383ec28eeff" in err.value.message
    assert doc["identifier"] in err.value.message
    assert "MMZu9WvwKIro-rtBQfDk4PsKO7_" in err.value.message


def test_canonical_bytes_definition(image: Path) -> None:
    meta = _meta(
        image,
        title="Tïtle ✓",
        os="ttylinux",
        os_version="9.7",
        os_arch="i486",
        tags=["base"],
        locations=["https://example.org/ttylinux.img"],
        inbound_ports=[22, 80],
        extensions={"cimi:cpu": 2},
    )
    data = canonical_bytes(meta)
    document = json.loads(data)
    expected = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert data == expected
    assert "Tïtle ✓".encode() in data
    assert b'"created":"2026-01-02T03:04:05Z"' in data
    assert b"null" not in data
    assert b'"tags":["base"]' in data
    assert parse_metadata(data) == meta


def test_times_are_utc_whole_seconds(image: Path) -> None:
    plus_one = datetime(2026, 1, 2, 4, 4, 5, 999, tzinfo=timezone(timedelta(hours=1)))
    meta = build_metadata(image, description="x", format="raw", created=plus_one)
    assert meta.created == CREATED
    with pytest.raises(InvalidInput, match="must carry a timezone"):
        build_metadata(image, description="x", format="raw", created=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("description"), "description: Field required"),
        (lambda d: d.update(kind="vm"), "kind: Input should be 'machine' or 'disk'"),
        (lambda d: d.update(bytes=-1), "bytes: Input should be greater than or equal to 0"),
        (lambda d: d.update(inbound_ports=[70000]), "inbound_ports.0"),
        (lambda d: d.update(locations=["not a url"]), "locations.0"),
        (lambda d: d.update(tags=["bad tag"]), "tags.0"),
        (lambda d: d.update(valid_until="2020-01-01T00:00:00Z"), "valid_until"),
        (lambda d: d["checksums"].update(md5="XYZ"), "checksums.md5"),
    ],
)
def test_malformed_documents_name_the_field(image: Path, mutate: object, message: str) -> None:
    doc = json.loads(canonical_bytes(_meta(image)))
    mutate(doc)  # type: ignore[operator]
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(InvalidInput, match="invalid metadata") as err:
        parse_metadata(data)
    assert message in err.value.message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"a":1,"a":2}', "repeats the key 'a'"),
    ],
)
def test_bad_bytes(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_metadata(data)


@pytest.mark.parametrize(
    "reformat",
    [
        lambda d: json.dumps(d, sort_keys=True).encode(),  # white space
        lambda d: json.dumps(d, separators=(",", ":")).encode(),  # key order
        lambda d: json.dumps({**d, "title": None}, sort_keys=True, separators=(",", ":")).encode(),
        lambda d: json.dumps(
            {k: v for k, v in d.items() if k != "tags"}, sort_keys=True, separators=(",", ":")
        ).encode(),
    ],
)
def test_non_canonical_refused(image: Path, reformat: object) -> None:
    doc = json.loads(canonical_bytes(_meta(image)))
    doc = {"title": "b", **doc}
    data = reformat(doc)  # type: ignore[operator]
    with pytest.raises(InvalidInput, match="not in canonical form"):
        parse_metadata(data)


def test_schema_file_is_up_to_date() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "regenerate: python -c 'from stratuslab.marketplace.metadata import schema_text; "
        'print(schema_text(), end="")\' > src/stratuslab/marketplace/metadata.schema.json'
    )


def test_schema_covers_the_original_fields() -> None:
    schema = schema_json()
    assert schema["$schema"].endswith("2020-12/schema")
    properties = set(schema["properties"])
    original = {
        "identifier", "bytes", "checksums", "format", "compression", "kind", "os",
        "os_version", "os_arch", "hypervisor", "disks_bus", "title", "description", "creator",
        "publisher", "created", "valid_until", "version", "serial_number", "locations", "tags",
        "replaces", "is_replaced_by", "is_version_of", "inbound_ports", "outbound_ports",
        "deprecated", "endorser",
    }  # fmt: skip
    assert original <= properties
    assert set(schema["required"]) >= {"identifier", "bytes", "checksums", "created"}
    assert "null" not in json.dumps(schema)


def test_public_schema_function() -> None:
    assert marketplace.schema_json() == schema_json()
