"""Certificates as the marketplace sees them: names, emails, endorsers, signing keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from stratuslab.errors import InvalidInput
from stratuslab.marketplace.metadata import Endorser

SigningPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_SHORT_NAMES = {NameOID.EMAIL_ADDRESS: "emailAddress"}


def dn_string(name: x509.Name) -> str:
    """A name in the grid's slash form, in certificate order: ``/DC=org/O=Lab/CN=Jane``."""
    parts = []
    for rdn in name.rdns:
        attrs = "+".join(f"{_short_name(a)}={_value(a)}" for a in rdn)
        parts.append("/" + attrs)
    return "".join(parts)


def _short_name(attr: x509.NameAttribute[str | bytes]) -> str:
    return _SHORT_NAMES.get(attr.oid, attr.rfc4514_attribute_name)


def _value(attr: x509.NameAttribute[str | bytes]) -> str:
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def email_of(cert: x509.Certificate) -> str | None:
    """The endorser email: the first subjectAltName rfc822Name, else the DN emailAddress."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        emails: list[str] = []
    else:
        emails = san.value.get_values_for_type(x509.RFC822Name)
    if emails:
        return emails[0]
    in_dn = cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
    return _value(in_dn[0]) if in_dn else None


def endorser_of(cert: x509.Certificate) -> Endorser:
    """The endorser block for a signing certificate."""
    return Endorser(
        email=email_of(cert), subject=dn_string(cert.subject), issuer=dn_string(cert.issuer)
    )


def describe(cert: x509.Certificate) -> str:
    """A short human name for messages: the subject DN and serial number."""
    return f"{dn_string(cert.subject)} (serial {cert.serial_number:#x})"


@dataclass(frozen=True)
class SigningKey:
    """An endorser's certificate, its private key and any intermediate CA certificates."""

    certificate: x509.Certificate
    private_key: SigningPrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def endorser(self) -> Endorser:
        return endorser_of(self.certificate)


def load_pkcs12(path: Path, password: bytes | None = None) -> SigningKey:
    """Load a grid-style ``.p12`` file (certificate + key + optional chain)."""
    data = _read(path)
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        raise InvalidInput(
            f"cannot open PKCS#12 file {path}: {exc}",
            hint="check the file and its password",
        ) from exc
    if key is None or cert is None:
        raise InvalidInput(
            f"PKCS#12 file {path} lacks a private key or certificate",
            hint="export both the certificate and its key",
        )
    return SigningKey(cert, _signing_key(key, path), tuple(extra))


def load_pem(key_path: Path, cert_path: Path, password: bytes | None = None) -> SigningKey:
    """Load a PEM private key and a PEM certificate file (endorser first, then its chain)."""
    try:
        key = serialization.load_pem_private_key(_read(key_path), password)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"cannot load the private key {key_path}: {exc}",
            hint="give a PEM key (and its password if it is encrypted)",
        ) from exc
    try:
        certs = x509.load_pem_x509_certificates(_read(cert_path))
    except ValueError as exc:
        raise InvalidInput(
            f"cannot load certificates from {cert_path}: {exc}",
            hint="give a PEM certificate file",
        ) from exc
    return SigningKey(certs[0], _signing_key(key, key_path), tuple(certs[1:]))


def _signing_key(key: object, path: Path) -> SigningPrivateKey:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key
    raise InvalidInput(
        f"the key in {path} is a {type(key).__name__}; CMS signing needs RSA or EC",
        hint="use an RSA or EC key (grid certificates are RSA)",
    )


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", hint="check the path") from exc
