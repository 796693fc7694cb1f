from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from stratuslab.errors import InvalidInput, VerificationError
from stratuslab.marketplace.certs import load_pem, load_pkcs12
from stratuslab.marketplace.metadata import build_metadata, canonical_bytes
from stratuslab.marketplace.signing import sign, sign_bytes
from stratuslab.marketplace.truststore import TrustStore, TrustStoreCache
from stratuslab.marketplace.verify import verify_entry
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
    write_pkcs12,
)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return standard_pki(tmp_path)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "disk.img")


def _refused(pki: Pki, metadata: bytes, signature: bytes, match: str, **kw: bool) -> str:
    with pytest.raises(VerificationError, match=match) as err:
        verify_entry(metadata, signature, pki.store(), at=NOW, **kw)
    return err.value.message


def test_signed_entry_verifies_and_names_the_endorser(pki: Pki, image: Path) -> None:
    signed = entry_for(image, pki.jane, tags=["base"])
    verified = verify_entry(signed.metadata, signed.signature, pki.store(), at=NOW)
    assert verified.endorser.email == "jane@example.org"
    assert verified.endorser.subject == "/DC=org/DC=stratuslab-test/CN=Jane Endorser"
    assert verified.endorser.issuer == "/DC=org/DC=stratuslab-test/CN=Test Root CA"
    assert verified.metadata.endorser == verified.endorser
    assert verified.metadata.tags == ["base"]
    assert verified.chain[-1] == pki.root.cert


@pytest.mark.parametrize(("key_kind", "email_in"), [("rsa", "san"), ("ec", "dn")])
def test_rsa_keys_and_email_in_dn(pki: Pki, image: Path, key_kind: str, email_in: str) -> None:
    key = make_endorser(pki.root, "Bob", email="Bob@Example.org", email_in=email_in,
                        key_kind=key_kind)  # fmt: skip
    signed = entry_for(image, key)
    verified = verify_entry(signed.metadata, signed.signature, pki.store(), at=NOW)
    assert verified.endorser.email == "Bob@Example.org"
    assert verified.endorser.key == "bob@example.org"


def test_endorser_without_email_is_named_by_dn(pki: Pki, image: Path) -> None:
    key = make_endorser(pki.root, "Robot", email=None)
    signed = entry_for(image, key)
    verified = verify_entry(signed.metadata, signed.signature, pki.store(), at=NOW)
    assert verified.endorser.email is None
    assert verified.endorser.key == "/DC=org/DC=stratuslab-test/CN=Robot"


def test_one_byte_changed_in_metadata_is_refused(pki: Pki, image: Path) -> None:
    signed = entry_for(image, pki.jane, title="Ubuntu")
    tampered = signed.metadata.replace(b"Ubuntu", b"Ubuntv")
    assert len(tampered) == len(signed.metadata)
    message = _refused(pki, tampered, signed.signature, "digest mismatch")
    assert "the metadata bytes have sha256" in message


@pytest.mark.parametrize("position", [-1, -10, -40])
def test_signature_value_altered_is_refused(pki: Pki, image: Path, position: int) -> None:
    signed = entry_for(image, pki.jane)
    sig = bytearray(signed.signature)
    sig[position] ^= 0x01
    with pytest.raises(VerificationError):
        verify_entry(signed.metadata, bytes(sig), pki.store(), at=NOW)


def test_untrusted_ca_is_refused(pki: Pki, image: Path) -> None:
    rogue = make_ca("Rogue CA")
    signed = entry_for(image, make_endorser(rogue))
    message = _refused(pki, signed.metadata, signed.signature, "untrusted CA")
    assert "Rogue CA" in message and str(pki.trust_dir) in message


def test_impostor_ca_with_a_trusted_name_is_refused(pki: Pki, image: Path) -> None:
    impostor = make_ca("Test Root CA")
    signed = entry_for(image, make_endorser(impostor))
    _refused(pki, signed.metadata, signed.signature, "that CA's key did not sign it")


def test_self_signed_endorser_not_in_store(pki: Pki, image: Path) -> None:
    selfish = make_ca("Jane Tester")
    key = make_endorser(pki.root)
    key = type(key)(selfish.cert, selfish.key)
    signed = entry_for(image, key)
    _refused(pki, signed.metadata, signed.signature, "self-signed and not in the trust store")


def test_expired_certificate_is_refused(pki: Pki, image: Path) -> None:
    old = make_endorser(pki.root, not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    signed = entry_for(image, old, created=NOW - 2 * DAY)
    message = _refused(pki, signed.metadata, signed.signature, "expired at")
    assert (NOW - DAY).isoformat() in message


def test_not_yet_valid_certificate_is_refused(pki: Pki, image: Path) -> None:
    early = make_endorser(pki.root, not_before=NOW + DAY)
    signed = entry_for(image, early)
    _refused(pki, signed.metadata, signed.signature, "is not valid before")


def test_expired_ca_is_refused(tmp_path: Path, image: Path) -> None:
    root = make_ca("Old CA", not_before=NOW - 900 * DAY, not_after=NOW - DAY)
    install(tmp_path / "certs", root)
    key = make_endorser(root, not_before=NOW - 800 * DAY, not_after=NOW + DAY)
    signed = entry_for(image, key)
    with pytest.raises(VerificationError, match=r"Old CA.*expired at"):
        verify_entry(signed.metadata, signed.signature, TrustStore.load(tmp_path / "certs"),
                     at=NOW)  # fmt: skip


def test_revoked_certificate_is_refused(pki: Pki, image: Path) -> None:
    signed = entry_for(image, pki.jane)
    pki.root.revoke(pki.jane.certificate, NOW - 3 * DAY)
    pki.refresh_crl()
    message = _refused(pki, signed.metadata, signed.signature, "was revoked on")
    assert (NOW - 3 * DAY).isoformat() in message
    assert "Test Root CA" in message


def test_other_revocations_do_not_matter(pki: Pki, image: Path) -> None:
    other = make_endorser(pki.root, "Other")
    pki.root.revoke(other.certificate)
    pki.refresh_crl()
    signed = entry_for(image, pki.jane)
    verify_entry(signed.metadata, signed.signature, pki.store(), at=NOW)


def test_expired_crl_fails_closed(pki: Pki, image: Path) -> None:
    write_crl(pki.trust_dir, pki.root, stem="test-root-ca", next_update=NOW - DAY)
    signed = entry_for(image, pki.jane)
    _refused(pki, signed.metadata, signed.signature, "CRL of CA .* expired at")


def test_unreadable_crl_fails_closed(pki: Pki, image: Path) -> None:
    (pki.trust_dir / "deadbeef.r0").write_bytes(b"garbage")
    signed = entry_for(image, pki.jane)
    _refused(pki, signed.metadata, signed.signature, "unreadable CRL file.*deadbeef.r0")


def test_missing_crl_only_refused_when_required(tmp_path: Path, image: Path) -> None:
    root = make_ca("No CRL CA")
    install(tmp_path / "certs", root)
    signed = entry_for(image, make_endorser(root))
    store = TrustStore.load(tmp_path / "certs")
    verify_entry(signed.metadata, signed.signature, store, at=NOW)
    with pytest.raises(VerificationError, match="no CRL from CA"):
        verify_entry(signed.metadata, signed.signature, store, at=NOW, require_crls=True)


def test_intermediate_carried_in_the_signature(pki: Pki, image: Path) -> None:
    sub = make_ca("Test Sub CA", parent=pki.root)
    key = make_endorser(sub, chain=(sub.cert,))
    signed = entry_for(image, key)
    verified = verify_entry(signed.metadata, signed.signature, pki.store(), at=NOW)
    assert [c.subject for c in verified.chain] == [key.certificate.subject, sub.cert.subject,
                                                   pki.root.cert.subject]  # fmt: skip


def test_revoked_intermediate_is_refused(pki: Pki, image: Path) -> None:
    sub = make_ca("Test Sub CA", parent=pki.root)
    signed = entry_for(image, make_endorser(sub, chain=(sub.cert,)))
    pki.root.revoke(sub.cert)
    pki.refresh_crl()
    _refused(pki, signed.metadata, signed.signature, "Test Sub CA.*was revoked")


def test_missing_intermediate_is_untrusted(pki: Pki, image: Path) -> None:
    sub = make_ca("Test Sub CA", parent=pki.root)
    signed = entry_for(image, make_endorser(sub))
    _refused(pki, signed.metadata, signed.signature, "untrusted CA.*Test Sub CA")


def test_end_entity_cannot_act_as_ca(pki: Pki, image: Path) -> None:
    from tests.marketplace_pki import CA

    jane_as_ca = CA("jane", pki.jane.certificate, pki.jane.private_key)
    victim = make_endorser(jane_as_ca, "Mallory", chain=(pki.jane.certificate,))
    signed = entry_for(image, victim)
    _refused(pki, signed.metadata, signed.signature, "is not a CA")


def test_key_usage_must_allow_signing(pki: Pki, image: Path) -> None:
    key = make_endorser(pki.root, "Encrypt Only", signing_usage=False)
    signed = entry_for(image, key)
    _refused(pki, signed.metadata, signed.signature, "may not sign")


def test_endorser_block_must_match_the_certificate(pki: Pki, image: Path) -> None:
    bob = make_endorser(pki.root, "Bob", email="bob@example.org")
    meta = build_metadata(image, description="x", format="raw")
    data = canonical_bytes(meta.model_copy(update={"endorser": bob.endorser}))
    signature = sign_bytes(data, pki.jane)
    message = _refused(pki, data, signature, "does not match the signing certificate")
    assert "Bob" in message and "Jane" in message


def test_endorser_block_is_required(pki: Pki, image: Path) -> None:
    data = canonical_bytes(build_metadata(image, description="x", format="raw"))
    _refused(pki, data, sign_bytes(data, pki.jane), "no endorser block")


def test_endorse_refuses_a_foreign_endorser_block(pki: Pki, image: Path) -> None:
    bob = make_endorser(pki.root, "Bob", email="bob@example.org")
    meta = build_metadata(image, description="x", format="raw").model_copy(
        update={"endorser": bob.endorser}
    )
    with pytest.raises(InvalidInput, match="names endorser"):
        sign(meta, pki.jane)


@pytest.mark.parametrize(
    ("signature", "match"),
    [(b"", "not a valid CMS"), (b"\x30\x03\x02\x01\x01", "not a valid CMS")],
)
def test_garbage_signature(pki: Pki, image: Path, signature: bytes, match: str) -> None:
    signed = entry_for(image, pki.jane)
    _refused(pki, signed.metadata, signature, match)


def test_attached_signature_is_refused(pki: Pki, image: Path) -> None:
    signed = entry_for(image, pki.jane)
    attached = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(signed.metadata)
        .add_signer(pki.jane.certificate, pki.jane.private_key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    _refused(pki, signed.metadata, attached, "detached signature is required")


def test_signature_without_certificates_is_refused(pki: Pki, image: Path) -> None:
    signed = entry_for(image, pki.jane)
    bare = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(signed.metadata)
        .add_signer(pki.jane.certificate, pki.jane.private_key, hashes.SHA256())
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoCerts],
        )
    )
    _refused(pki, signed.metadata, bare, "does not carry the signer's certificate")


def test_pem_armoured_signature_is_accepted(pki: Pki, image: Path) -> None:
    signed = entry_for(image, pki.jane)
    pem = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(signed.metadata)
        .add_signer(pki.jane.certificate, pki.jane.private_key, hashes.SHA256())
        .sign(
            serialization.Encoding.PEM,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    )
    verify_entry(signed.metadata, pem, pki.store(), at=NOW)


def test_keys_load_from_pkcs12_and_pem(pki: Pki, image: Path, tmp_path: Path) -> None:
    sub = make_ca("Test Sub CA", parent=pki.root)
    key = make_endorser(sub, chain=(sub.cert,))
    p12 = load_pkcs12(write_pkcs12(tmp_path / "jane.p12", key), b"secret")
    pem = load_pem(*write_pem(tmp_path, key))
    for loaded in (p12, pem):
        assert loaded.certificate == key.certificate
        assert loaded.chain == (sub.cert,)
        signed = sign(build_metadata(image, description="x", format="raw"), loaded)
        verify_entry(signed.metadata, signed.signature, pki.store(), at=NOW)
    with pytest.raises(InvalidInput, match="cannot open PKCS#12"):
        load_pkcs12(tmp_path / "jane.p12", b"wrong")
    with pytest.raises(InvalidInput, match="cannot read"):
        load_pkcs12(tmp_path / "missing.p12")


def test_trust_store_layout(tmp_path: Path) -> None:
    a, b = make_ca("CA A"), make_ca("CA B")
    d = tmp_path / "certificates"
    d.mkdir()
    (d / "1a2b3c4d.0").write_bytes(a.cert.public_bytes(serialization.Encoding.DER))
    (d / "ca-a.pem").write_bytes(a.cert.public_bytes(serialization.Encoding.PEM))  # duplicate
    (d / "bundle.pem").write_bytes(
        b.cert.public_bytes(serialization.Encoding.PEM) + a.cert.public_bytes(
            serialization.Encoding.PEM)
    )  # fmt: skip
    (d / "1a2b3c4d.r0").write_bytes(a.crl().public_bytes(serialization.Encoding.DER))
    (d / "ca-b.crl.pem").write_bytes(b.crl().public_bytes(serialization.Encoding.PEM))
    (d / "1a2b3c4d.signing_policy").write_text("access_id_CA X509 '/CN=CA A'")
    (d / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
    store = TrustStore.load(d)
    assert {c.subject for c in store.anchors} == {a.cert.subject, b.cert.subject}
    assert len(store.anchors) == 2
    assert len(store.crls) == 2
    assert [p.split(":")[0] for p in store.problems] == ["broken.pem"]
    assert store.crls_of(a.cert)[0].issuer == a.cert.subject


def test_trust_store_must_exist(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="is not a directory"):
        TrustStore.load(tmp_path / "nope")


def test_trust_store_cache_reloads_on_change(pki: Pki, image: Path) -> None:
    cache = TrustStoreCache(pki.trust_dir)
    first = cache.get()
    assert cache.get() is first
    signed = entry_for(image, pki.jane)
    verify_entry(signed.metadata, signed.signature, cache.get(), at=NOW)
    pki.root.revoke(pki.jane.certificate)
    crl = write_crl(pki.trust_dir, pki.root, stem="test-root-ca")
    os.utime(crl, ns=(1, 1))  # a different mtime even on coarse clocks
    assert cache.get() is not first
    with pytest.raises(VerificationError, match="revoked"):
        verify_entry(signed.metadata, signed.signature, cache.get(), at=NOW)


# --- interoperability with the openssl command line ---------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


@needs_openssl
def test_openssl_verifies_our_signature(pki: Pki, image: Path, tmp_path: Path) -> None:
    signed = entry_for(image, pki.jane)
    (tmp_path / "m.json").write_bytes(signed.metadata)
    (tmp_path / "m.p7s").write_bytes(signed.signature)
    result = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "m.p7s",
         "-content", tmp_path / "m.json", "-CAfile", pki.trust_dir / "test-root-ca.pem",
         "-out", os.devnull],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@needs_openssl
@pytest.mark.parametrize("extra", [[], ["-noattr"]])
def test_we_verify_openssl_signatures(
    pki: Pki, image: Path, tmp_path: Path, extra: list[str]
) -> None:
    key_path, cert_path = write_pem(tmp_path, pki.jane)
    meta = build_metadata(image, description="x", format="raw")
    data = canonical_bytes(meta.model_copy(update={"endorser": pki.jane.endorser}))
    (tmp_path / "m.json").write_bytes(data)
    subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-md", "sha256", "-outform", "DER",
         "-signer", cert_path, "-inkey", key_path, "-in", tmp_path / "m.json",
         "-out", tmp_path / "m.p7s", *extra],
        check=True, capture_output=True,
    )  # fmt: skip
    verified = verify_entry(data, (tmp_path / "m.p7s").read_bytes(), pki.store(), at=NOW)
    assert verified.endorser.email == "jane@example.org"
