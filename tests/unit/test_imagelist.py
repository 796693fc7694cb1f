"""HEPiX image lists: export (checked with the openssl CLI), import (of openssl-signed lists
too), round trips, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stratuslab.errors import Conflict, InvalidInput, VerificationError
from stratuslab.marketplace import service
from stratuslab.marketplace.app import build_context
from stratuslab.marketplace.context import MarketplaceContext, MarketplaceSettings
from stratuslab.marketplace.imagelist import (
    EXT_IMAGE,
    EXT_LIST,
    EXT_VERSION,
    ImageListState,
    Outcome,
    export_image_list,
    fetching_digests,
    image_uuid,
    import_image_list,
    is_newer,
    parse_image_list,
    split_smime,
    verify_image_list,
    verify_listed_entry,
    wrap_opaque,
)
from stratuslab.marketplace.metadata import (
    ImageMetadata,
    build_metadata,
    canonical_bytes,
    parse_metadata,
)
from stratuslab.marketplace.replication import LocalSink
from stratuslab.marketplace.truststore import TrustStore
from tests.marketplace_pki import (
    DAY,
    NOW,
    Pki,
    entry_for,
    install,
    make_ca,
    make_endorser,
    make_image,
    standard_pki,
    write_crl,
    write_pem,
)

LIST_ID = "5b2b6e9c-1f0e-4c53-9b62-0d6f5a1f4a11"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return standard_pki(tmp_path)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return [
        make_image(tmp_path / "alpha.img", b"alpha image " * 4000),
        make_image(tmp_path / "beta.img", b"beta image " * 3000),
    ]


def _entries(images: list[Path]) -> list[ImageMetadata]:
    return [
        build_metadata(
            path,
            format="raw",
            description=f"{path.stem} appliance",
            title=path.stem.title(),
            os="debian",
            os_version="12",
            os_arch="x86_64",
            version="1.0",
            tags=[path.stem],
            locations=[path.as_uri()],
            created=NOW - DAY,
        )
        for path in images
    ]


def _export(pki: Pki, entries: list[ImageMetadata], version: str = "3", **kw: Any) -> bytes:
    options: dict[str, Any] = {
        "identifier": LIST_ID,
        "version": version,
        "title": "Test VO images",
        "description": "images of the test VO",
        "uri": "https://lists.example.org/test.list",
        "created": NOW - DAY,
        **kw,
    }
    return export_image_list(entries, pki.jane, **options)


class ListSink:
    """Verifies each entry again, as a marketplace would, and keeps it."""

    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust
        self.entries: list[ImageMetadata] = []

    def put(self, metadata: bytes, signature: bytes) -> Outcome:
        verified = verify_listed_entry(metadata, signature, self.trust, at=NOW)
        self.entries.append(verified.metadata)
        return "stored"


# -- export --------------------------------------------------------------------------------


def test_export_is_accepted_by_openssl_smime_verify(
    tmp_path: Path, pki: Pki, images: list[Path]
) -> None:
    message = _export(pki, _entries(images))
    (tmp_path / "list.smime").write_bytes(message)
    proc = subprocess.run(
        [
            "openssl", "smime", "-verify",
            "-in", str(tmp_path / "list.smime"),
            "-CAfile", str(pki.trust_dir / "test-root-ca.pem"),
            "-out", str(tmp_path / "content.json"),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Verification successful" in proc.stderr
    document = json.loads((tmp_path / "content.json").read_bytes())["hv:imagelist"]
    for mandatory in (
        "dc:date:created", "dc:date:expires", "hv:endorser", "dc:identifier",
        "dc:description", "dc:title", "hv:images", "dc:source", "hv:version", "hv:uri",
    ):  # fmt: skip
        assert mandatory in document  # what atrope requires
    x509_block = document["hv:endorser"]["hv:x509"]
    assert x509_block["hv:dn"] == "/DC=org/DC=stratuslab-test/CN=Jane Endorser"
    assert x509_block["hv:ca"] == "/DC=org/DC=stratuslab-test/CN=Test Root CA"
    assert x509_block["hv:email"] == "jane@example.org"
    image = document["hv:images"][0]["hv:image"]
    assert image["sl:checksum:sha512"] == hashlib.sha512(images[0].read_bytes()).hexdigest()
    assert image["hv:size"] == images[0].stat().st_size
    assert image["hv:uri"] == images[0].as_uri()
    assert message.startswith(b"MIME-Version: 1.0")
    assert b'protocol="application/x-pkcs7-signature"' in message


def test_export_refuses_entries_subscribers_cannot_use(tmp_path: Path, pki: Pki) -> None:
    image = make_image(tmp_path / "x.img")
    no_location = build_metadata(image, format="raw", description="x")
    with pytest.raises(InvalidInput, match="no location"):
        _export(pki, [no_location])
    with pytest.raises(InvalidInput, match="at least one image"):
        _export(pki, [])


def test_image_uuid_is_stable_per_tag_series(pki: Pki, images: list[Path]) -> None:
    first, second = _entries(images)
    renamed = second.model_copy(update={"tags": list(first.tags), "endorser": first.endorser})
    assert image_uuid(first) == image_uuid(renamed)
    assert image_uuid(first) != image_uuid(second)


# -- round trip ----------------------------------------------------------------------------


def test_export_then_import_round_trips(pki: Pki, images: list[Path], tmp_path: Path) -> None:
    entries = _entries(images)
    message = _export(pki, entries)
    sink = ListSink(pki.store())
    state = ImageListState(tmp_path / "state" / "imagelists.json")
    report = import_image_list(message, sink, pki.store(), at=NOW, state=state)
    assert report.failed == [] and len(report.stored) == 2
    assert report.endorser == "jane@example.org"
    for original, imported in zip(entries, sink.entries, strict=True):
        assert imported.identifier == original.identifier
        assert imported.checksums.sha1 == original.checksums.sha1
        assert imported.checksums.sha512 == original.checksums.sha512
        assert imported.bytes == original.bytes
        assert (imported.os, imported.os_version, imported.os_arch) == ("debian", "12", "x86_64")
        assert imported.title == original.title and imported.description == original.description
        assert imported.locations == original.locations
        assert imported.endorser == pki.jane.endorser
        assert imported.extensions[EXT_LIST] == LIST_ID
        assert imported.extensions[EXT_VERSION] == "3"
        assert imported.tags == [imported.extensions[EXT_IMAGE]]
    assert state.read()[LIST_ID]["version"] == "3"
    # export the imported entries again: same image UUIDs, so subscribers see updates
    again = parse_image_list(_content(_export(pki, sink.entries, version="4")))
    first = parse_image_list(_content(message))
    assert [i.image.identifier for i in again.images] == [i.image.identifier for i in first.images]


def _content(message: bytes) -> bytes:
    return split_smime(message).contents[0]


def test_import_into_a_marketplace_then_replay(
    pki: Pki, images: list[Path], tmp_path: Path
) -> None:
    mp = _marketplace(tmp_path, pki)
    try:
        message = _export(pki, _entries(images))
        report = import_image_list(message, LocalSink(mp), pki.store(), at=NOW)
        assert len(report.stored) == 2
        again = import_image_list(message, LocalSink(mp), pki.store(), at=NOW)
        assert again.held == report.stored and again.stored == []
        with mp.sessions() as session:
            entry = service.image_history(session, _entries(images)[0].identifier)[0]
            assert entry.endorser_email == "jane@example.org"
            assert entry.signature == message  # the evidence: the signed list itself
            # what a replicating marketplace does: verify the stored bytes again
            verified = verify_listed_entry(
                entry.metadata_bytes, entry.signature, pki.store(), at=NOW
            )
            assert verified.endorser == pki.jane.endorser
    finally:
        mp.close()


def _marketplace(tmp_path: Path, pki: Pki) -> MarketplaceContext:
    settings = MarketplaceSettings(data_dir=tmp_path / "mp", trust_dir=pki.trust_dir)
    mp = build_context(settings)
    mp.clock = lambda: NOW
    return mp


# -- lists signed by other tools (openssl smime) -------------------------------------------


def _hepix_list(images: list[Path], pki: Pki, **overrides: Any) -> dict[str, Any]:
    who = pki.jane.endorser
    document: dict[str, Any] = {
        "dc:identifier": LIST_ID,
        "dc:title": "AppDB-style list",
        "dc:description": "a list as other endorsers publish them",
        "dc:date:created": (NOW - DAY).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dc:date:expires": (NOW + 28 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dc:source": "https://appdb.example.org/",
        "hv:version": "2024.1",
        "hv:uri": "https://appdb.example.org/test.list",
        "hv:endorser": {"hv:x509": {"hv:dn": who.subject, "hv:ca": who.issuer,
                                    "hv:email": who.email, "dc:creator": "Jane"}},
        "hv:images": [
            {"hv:image": {
                "dc:identifier": f"0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
                "dc:title": path.stem,
                "dc:description": "",
                "hv:uri": path.as_uri(),
                "hv:size": str(path.stat().st_size),
                "hv:version": 7,
                "sl:checksum:sha512": hashlib.sha512(path.read_bytes()).hexdigest(),
                "sl:arch": "x86_64", "sl:os": "Linux", "sl:osversion": "Debian 12",
                "hv:hypervisor": ["KVM", "QEMU"],
                "ad:mpuri": f"https://appdb.example.org/store/vm/image/{i}",
                "ad:user:fullname": "not kept: two colons",
            }}
            for i, path in enumerate(images)
        ],
    }  # fmt: skip
    document.update(overrides)
    return {"hv:imagelist": document}


def _openssl_sign(tmp_path: Path, pki: Pki, document: dict[str, Any], *extra: str) -> bytes:
    key, cert = write_pem(tmp_path, pki.jane)
    source = tmp_path / "list.json"
    source.write_text(json.dumps(document, indent=2) + "\n")
    out = tmp_path / "list.signed"
    subprocess.run(
        ["openssl", "smime", "-sign", "-signer", str(cert), "-inkey", str(key),
         "-in", str(source), "-out", str(out), *extra],
        check=True, capture_output=True,
    )  # fmt: skip
    return out.read_bytes()


@pytest.mark.parametrize("extra", [(), ("-nodetach",), ("-nodetach", "-outform", "DER")])
def test_import_openssl_signed_list_fetching_digests(
    tmp_path: Path, pki: Pki, images: list[Path], extra: tuple[str, ...]
) -> None:
    message = _openssl_sign(tmp_path, pki, _hepix_list(images, pki), *extra)
    sink = ListSink(pki.store())
    report = import_image_list(
        message, sink, pki.store(), at=NOW, fetcher=fetching_digests(), source="file:///x"
    )
    assert report.failed == [] and len(report.stored) == 2
    assert report.warnings == [
        "the list says it is published at https://appdb.example.org/test.list, not file:///x"
    ]
    entry = sink.entries[0]
    expected = build_metadata(images[0], format="raw", description="x")
    assert entry.identifier == expected.identifier
    assert entry.checksums == expected.checksums
    assert entry.description == "alpha" and entry.version == "7"
    assert entry.hypervisor == "KVM,QEMU" and entry.os == "Linux"
    assert entry.extensions["ad:mpuri"] == "https://appdb.example.org/store/vm/image/0"
    assert "ad:user:fullname" not in entry.extensions


def test_without_sha1_and_without_fetching_each_image_fails(
    tmp_path: Path, pki: Pki, images: list[Path]
) -> None:
    message = _openssl_sign(tmp_path, pki, _hepix_list(images, pki))
    state = ImageListState(tmp_path / "state.json")
    report = import_image_list(message, ListSink(pki.store()), pki.store(), at=NOW, state=state)
    assert [reason for _id, reason in report.failed] == [
        f"image 0000000{i}-aaaa-bbbb-cccc-dddddddddddd has no sl:checksum:sha1 and fetching "
        "images is off"
        for i in range(2)
    ]
    assert state.read() == {}  # not recorded: the same version may be imported again


def test_an_image_that_is_not_what_the_list_says_fails_alone(
    tmp_path: Path, pki: Pki, images: list[Path]
) -> None:
    document = _hepix_list(images, pki)
    images[1].write_bytes(b"tampered on the mirror")
    message = _openssl_sign(tmp_path, pki, document)
    report = import_image_list(
        message, ListSink(pki.store()), pki.store(), at=NOW, fetcher=fetching_digests()
    )
    assert len(report.stored) == 1
    assert len(report.failed) == 1 and "bytes, the list says" in report.failed[0][1]


# -- refusals ------------------------------------------------------------------------------


def test_expired_list_is_refused(pki: Pki, images: list[Path]) -> None:
    message = _export(pki, _entries(images), expires=NOW - timedelta(hours=1))
    with pytest.raises(VerificationError, match="expired at") as err:
        verify_image_list(message, pki.store(), at=NOW)
    assert err.value.code == "image_list_expired"


def test_older_or_equal_version_is_refused(pki: Pki, images: list[Path], tmp_path: Path) -> None:
    state = ImageListState(tmp_path / "imagelists.json")
    entries = _entries(images)
    sink = ListSink(pki.store())
    import_image_list(_export(pki, entries, version="1.10"), sink, pki.store(), at=NOW, state=state)
    for stale in ("1.10", "1.9", "1.2.99"):
        with pytest.raises(Conflict, match="not newer") as err:
            import_image_list(
                _export(pki, entries, version=stale), sink, pki.store(), at=NOW, state=state
            )
        assert err.value.code == "stale_image_list"
    import_image_list(_export(pki, entries, version="1.11"), sink, pki.store(), at=NOW, state=state)
    assert state.read()[LIST_ID]["version"] == "1.11"


def test_version_order() -> None:
    assert is_newer("1.10", "1.9") and is_newer("2", "1.99") and is_newer("20240102", "20231231")
    assert not is_newer("1.0", "1.0") and not is_newer("1.0", "1.00") and not is_newer("1", "2")
    assert is_newer("1.0b", "1.0a")


def test_tampered_content_is_refused(pki: Pki, images: list[Path]) -> None:
    message = _export(pki, _entries(images))
    tampered = message.replace(b"Test VO images", b"Test VO imageZ")
    with pytest.raises(VerificationError, match="digest mismatch"):
        verify_image_list(tampered, pki.store(), at=NOW)


def test_untrusted_and_revoked_signers_are_refused(
    tmp_path: Path, pki: Pki, images: list[Path]
) -> None:
    rogue_ca = make_ca("Rogue CA")
    rogue = make_endorser(rogue_ca, "Mallory", email="mallory@example.org")
    message = export_image_list(
        _entries(images), rogue, version="1", title="t", description="d", uri="https://x/"
    )
    with pytest.raises(VerificationError, match="untrusted CA"):
        verify_image_list(message, pki.store(), at=NOW)
    pki.root.revoke(pki.jane.certificate)
    write_crl(pki.trust_dir, pki.root, stem="test-root-ca")
    with pytest.raises(VerificationError, match="revoked"):
        verify_image_list(_export(pki, _entries(images)), pki.store(), at=NOW)


def test_endorser_block_must_name_the_signer(tmp_path: Path, pki: Pki, images: list[Path]) -> None:
    other = make_endorser(pki.root, "John Other", email="john@example.org")
    document = _hepix_list(images, pki)
    (tmp_path / "o").mkdir()
    key, cert = write_pem(tmp_path / "o", other)
    source = tmp_path / "list.json"
    source.write_text(json.dumps(document))
    out = tmp_path / "list.signed"
    subprocess.run(
        ["openssl", "smime", "-sign", "-signer", str(cert), "-inkey", str(key),
         "-in", str(source), "-out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    with pytest.raises(VerificationError, match="is signed by /DC=org/DC=stratuslab-test/CN=John"):
        verify_image_list(out.read_bytes(), pki.store(), at=NOW)


def test_unsigned_and_malformed_lists(tmp_path: Path, pki: Pki, images: list[Path]) -> None:
    with pytest.raises(VerificationError, match="not signed"):
        verify_image_list(json.dumps(_hepix_list(images, pki)).encode(), pki.store(), at=NOW)
    broken = _hepix_list(images, pki)
    del broken["hv:imagelist"]["hv:images"][1]["hv:image"]["sl:checksum:sha512"]
    message = _openssl_sign(tmp_path, pki, broken)
    with pytest.raises(InvalidInput, match=r"hv:images\.1\.hv:image\.sl:checksum:sha512"):
        verify_image_list(message, pki.store(), at=NOW)
    with pytest.raises(VerificationError, match="text/plain"):
        verify_image_list(b"Content-Type: text/plain\r\n\r\nhello", pki.store(), at=NOW)


def test_listed_entry_changed_after_import_is_refused(pki: Pki, images: list[Path]) -> None:
    message = _export(pki, _entries(images))
    sink = ListSink(pki.store())
    import_image_list(message, sink, pki.store(), at=NOW)
    changed = sink.entries[0].model_copy(update={"title": "Something else"})
    with pytest.raises(VerificationError, match="title differ"):
        verify_listed_entry(canonical_bytes(changed), message, pki.store(), at=NOW)
    foreign = parse_metadata(entry_for(images[0], pki.jane).metadata)
    with pytest.raises(VerificationError, match="no imagelist:image extension"):
        verify_listed_entry(canonical_bytes(foreign), message, pki.store(), at=NOW)


def test_intermediate_ca_chain_is_carried(tmp_path: Path, images: list[Path]) -> None:
    root = make_ca("Grid Root")
    issuing = make_ca("Grid Issuing", parent=root)
    trust = tmp_path / "trust"
    install(trust, root)
    key = make_endorser(issuing, "Robot", email="robot@example.org", chain=(issuing.cert,))
    message = export_image_list(
        _entries(images), key, version="1", title="t", description="d", uri="https://x/"
    )
    listed = verify_image_list(message, TrustStore.load(trust), at=NOW)
    assert listed.endorser.email == "robot@example.org"
    assert len(listed.chain) == 3


def test_opaque_evidence_keeps_der_byte_for_byte() -> None:
    # a DER signature may end in a byte that is whitespace in ASCII (here 0x0a): stripping
    # it used to break about one openssl DER signature in forty
    der = bytes([0x30, 0x03, 0x02, 0x01, 0x0A])
    body = wrap_opaque(b"\n" + der).split(b"\r\n\r\n", 1)[1]
    assert base64.b64decode(body) == der
