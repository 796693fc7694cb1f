"""A throw-away PKI for marketplace tests: CAs, endorser certificates, CRLs, trust dirs.

Everything is generated with ``cryptography`` (EC P-256 keys by default: fast); nothing is
read from the network or the host's trust store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from stratuslab.marketplace.certs import SigningKey, SigningPrivateKey
from stratuslab.marketplace.metadata import build_metadata
from stratuslab.marketplace.signing import SignedEntry, sign
from stratuslab.marketplace.truststore import TrustStore

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


def _name(cn: str, email_in_dn: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "stratuslab-test"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ]
    if email_in_dn is not None:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email_in_dn))
    return x509.Name(attrs)


def _key(kind: str) -> SigningPrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class CA:
    name: str
    cert: x509.Certificate
    key: SigningPrivateKey
    revoked: list[tuple[int, datetime]] = field(default_factory=list)

    def crl(self, *, next_update: datetime | None = None) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(NOW - DAY)
            .next_update(next_update or NOW + 7 * DAY)
        )
        for serial, when in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.key, hashes.SHA256())

    def revoke(self, cert: x509.Certificate, when: datetime = NOW - DAY) -> None:
        self.revoked.append((cert.serial_number, when))


def make_ca(
    cn: str,
    *,
    parent: CA | None = None,
    not_before: datetime = NOW - 30 * DAY,
    not_after: datetime = NOW + 3650 * DAY,
) -> CA:
    key = _key("ec")
    subject = _name(cn)
    issuer_name, issuer_key = (parent.cert.subject, parent.key) if parent else (subject, key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return CA(cn, cert, key)


def make_endorser(
    ca: CA,
    cn: str = "Jane Endorser",
    *,
    email: str | None = "jane@example.org",
    email_in: str = "san",
    key_kind: str = "ec",
    not_before: datetime = NOW - 10 * DAY,
    not_after: datetime = NOW + 365 * DAY,
    chain: tuple[x509.Certificate, ...] = (),
    signing_usage: bool = True,
) -> SigningKey:
    key = _key(key_kind)
    subject = _name(cn, email if email_in == "dn" else None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=signing_usage,
                content_commitment=False,
                key_encipherment=not signing_usage,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if email is not None and email_in == "san":
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    return SigningKey(cert, key, chain)


def install(trust_dir: Path, ca: CA, *, crl: bool = False, stem: str | None = None) -> None:
    """Put a CA (and optionally its current CRL) in a grid-style trust directory."""
    trust_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or ca.name.lower().replace(" ", "-")
    (trust_dir / f"{stem}.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    if crl:
        write_crl(trust_dir, ca, stem=stem)


def write_crl(
    trust_dir: Path, ca: CA, *, stem: str | None = None, next_update: datetime | None = None
) -> Path:
    stem = stem or ca.name.lower().replace(" ", "-")
    path = trust_dir / f"{stem}.r0"
    path.write_bytes(ca.crl(next_update=next_update).public_bytes(serialization.Encoding.PEM))
    return path


def write_pkcs12(path: Path, key: SigningKey, password: bytes | None = b"secret") -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    data = pkcs12.serialize_key_and_certificates(
        b"endorser", key.private_key, key.certificate, list(key.chain) or None, encryption
    )
    path.write_bytes(data)
    return path


def write_pem(directory: Path, key: SigningKey) -> tuple[Path, Path]:
    key_path, cert_path = directory / "userkey.pem", directory / "usercert.pem"
    key_path.write_bytes(
        key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (key.certificate, *key.chain)
    )
    cert_path.write_bytes(pem)
    return key_path, cert_path


@dataclass
class Pki:
    """A trust directory holding one root CA (with a CRL), and an endorser it issued."""

    trust_dir: Path
    root: CA
    jane: SigningKey

    def store(self) -> TrustStore:
        return TrustStore.load(self.trust_dir)

    def refresh_crl(self) -> None:
        write_crl(self.trust_dir, self.root)


def standard_pki(tmp_path: Path) -> Pki:
    root = make_ca("Test Root CA")
    trust_dir = tmp_path / "certificates"
    install(trust_dir, root, crl=True)
    return Pki(trust_dir, root, make_endorser(root))


def make_image(path: Path, content: bytes = b"disk image " * 1000) -> Path:
    path.write_bytes(content)
    return path


def entry_for(
    image: Path, key: SigningKey, *, created: datetime = NOW, **fields: Any
) -> SignedEntry:
    """A signed entry for ``image`` (description and format defaulted)."""
    fields.setdefault("description", "a test appliance")
    fields.setdefault("format", "raw")
    return sign(build_metadata(image, created=created, **fields), key)
