"""Throw-away credentials for identity tests: a CA, user certificates, RFC 3820 and legacy
proxies, CRLs, a grid-style trust directory, and a local OIDC issuer (keys, JWKS, JWTs,
optionally served over HTTP on loopback).

Everything is generated with ``cryptography``; nothing is read from the host or network.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stratuslab.identity.x509 import (
    POLICY_INDEPENDENT,
    POLICY_INHERIT_ALL,
    POLICY_LIMITED,
    PROXY_CERT_INFO,
    PROXY_CERT_INFO_DRAFT,
)

NOW = datetime.now(UTC).replace(microsecond=0)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@cache
def rsa_key(slot: int = 0) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make: a few, reused by every test."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def grid_name(*cns: str, org: str = "StratusLab Test") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "stratuslab"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            *(x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns),
        ]
    )


def _key_usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Credential:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def subject(self) -> x509.Name:
        return self.cert.subject


@dataclass
class CA(Credential):
    revoked: list[tuple[int, datetime]] = field(default_factory=list)

    def revoke(self, cert: x509.Certificate, when: datetime = NOW - HOUR) -> None:
        self.revoked.append((cert.serial_number, when))

    def crl(self, *, next_update: datetime = NOW + 7 * DAY) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(min(NOW - DAY, next_update - DAY))
            .next_update(next_update)
        )
        for serial, when in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.key, hashes.SHA256())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: Any,
    not_before: datetime,
    not_after: datetime,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def make_ca(
    cn: str = "Test CA",
    *,
    parent: CA | None = None,
    not_before: datetime = NOW - 30 * DAY,
    not_after: datetime = NOW + 3650 * DAY,
) -> CA:
    key = ec_key()
    subject = grid_name(cn, org="Test Grid Authority")
    issuer, signer = (parent.subject, parent.key) if parent else (subject, key)
    cert = (
        _builder(subject, issuer, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(sign=False, ca=True), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return CA(cert, key)


def make_user(
    ca: CA,
    cn: str = "Jane Doe",
    *,
    not_before: datetime = NOW - 10 * DAY,
    not_after: datetime = NOW + 365 * DAY,
    eku: tuple[x509.ObjectIdentifier, ...] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    is_ca: bool = False,
    digital_signature: bool = True,
    email: str | None = None,
) -> Credential:
    key = ec_key()
    subject = grid_name(cn)
    if email is not None:
        subject = x509.Name(
            [
                *subject.rdns,
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, email)]),
            ]
        )
    builder = (
        _builder(subject, ca.subject, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(_key_usage(sign=digital_signature, ca=is_ca), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return Credential(builder.sign(ca.key, hashes.SHA256()), key)


def proxy_cert_info(policy: str = POLICY_INHERIT_ALL, path_length: int | None = None) -> bytes:
    """DER of ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL,
    proxyPolicy SEQUENCE { policyLanguage OID } }."""

    def tlv(tag: int, body: bytes) -> bytes:
        return bytes([tag, len(body)]) + body

    arcs = [int(a) for a in policy.split(".")]
    oid = bytes([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        oid += bytes(reversed(chunk))
    inner = tlv(0x30, tlv(0x06, oid))
    if path_length is not None:
        inner = tlv(0x02, path_length.to_bytes(1, "big")) + inner
    return tlv(0x30, inner)


def make_proxy(
    issuer: Credential,
    *,
    kind: str = "rfc3820",
    policy: str = POLICY_INHERIT_ALL,
    path_length: int | None = None,
    cn: str | None = None,
    subject: x509.Name | None = None,
    not_before: datetime = NOW - HOUR,
    not_after: datetime = NOW + 12 * HOUR,
    signer: PrivateKey | None = None,
    is_ca: bool = False,
    san: bool = False,
) -> Credential:
    """A proxy of ``issuer``: ``kind`` is rfc3820, draft (GT3) or legacy (GT2)."""
    key = ec_key()
    serial = x509.random_serial_number()
    if cn is None:
        legacy_cn = "limited proxy" if policy == POLICY_LIMITED else "proxy"
        cn = legacy_cn if kind == "legacy" else str(serial)
    name = subject or x509.Name(
        [
            *issuer.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        ]
    )
    builder = _builder(name, issuer.subject, key.public_key(), not_before, not_after, serial)
    builder = builder.add_extension(_key_usage(sign=True, ca=False), critical=True)
    if is_ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    if kind != "legacy":
        oid = PROXY_CERT_INFO if kind == "rfc3820" else PROXY_CERT_INFO_DRAFT
        value = x509.UnrecognizedExtension(oid, proxy_cert_info(policy, path_length))
        builder = builder.add_extension(value, critical=True)
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("example.org")]), critical=False
        )
    return Credential(builder.sign(signer or issuer.key, hashes.SHA256()), key)


INDEPENDENT = POLICY_INDEPENDENT
LIMITED = POLICY_LIMITED


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def nginx_escaped(*certs: x509.Certificate) -> str:
    """Like nginx's ``$ssl_client_escaped_cert``: the PEM, URL-encoded."""
    return quote(pem(*certs), safe="")


@cache
def subject_hash(cert: x509.Certificate) -> str:
    """OpenSSL's ``-subject_hash`` when openssl is installed (else a stand-in)."""
    if shutil.which("openssl"):
        out = subprocess.run(
            ["openssl", "x509", "-noout", "-subject_hash"],
            input=cert.public_bytes(serialization.Encoding.PEM),
            capture_output=True,
            check=True,
        )
        return out.stdout.decode().strip()
    return uuid.uuid5(uuid.NAMESPACE_OID, cert.subject.rfc4514_string()).hex[:8]


def write_trust_dir(
    path: Path,
    cas: list[CA],
    *,
    crls: list[x509.CertificateRevocationList] | None = None,
    layout: str = "hashed",
) -> Path:
    """``<hash>.0`` + ``<hash>.r0`` (fetch-crl style) or ``<name>.pem`` + ``<name>.crl.pem``."""
    path.mkdir(parents=True, exist_ok=True)
    crl_list = [ca.crl() for ca in cas] if crls is None else crls
    for ca in cas:
        name = subject_hash(ca.cert) if layout == "hashed" else f"ca-{ca.cert.serial_number:x}"
        suffix = ".0" if layout == "hashed" else ".pem"
        (path / f"{name}{suffix}").write_text(pem(ca.cert))
        (path / f"{name}.signing_policy").write_text("# ignored\n")
    for index, crl in enumerate(crl_list):
        issuer = next(ca for ca in cas if ca.subject == crl.issuer)
        name = subject_hash(issuer.cert) if layout == "hashed" else f"crl-{index}"
        suffix = f".r{index}" if layout == "hashed" else ".crl.pem"
        (path / f"{name}{suffix}").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


# -- a local OIDC issuer -----------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(value: int, length: int | None = None) -> str:
    return b64url(value.to_bytes(length or (value.bit_length() + 7) // 8, "big"))


def jwk(kid: str, key: PrivateKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": kid,
            "use": "sig",
            "alg": "RS256",
            "n": _int_b64(numbers.n),
            "e": _int_b64(numbers.e),
        }
    point = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "kid": kid,
        "use": "sig",
        "crv": "P-256",
        "x": _int_b64(point.x, 32),
        "y": _int_b64(point.y, 32),
    }


def encode_jwt(
    header: dict[str, Any], claims: dict[str, Any], key: PrivateKey | bytes | None
) -> str:
    """Sign ``header``/``claims`` as ``header["alg"]`` says (``none``: no signature;
    ``HS256`` with ``key`` as bytes: the shared-secret forgery)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    data = signing_input.encode()
    alg = header.get("alg")
    if alg == "none" or key is None:
        signature = b""
    elif isinstance(key, bytes):
        mac = hmac.HMAC(key, hashes.SHA256())
        mac.update(data)
        signature = mac.finalize()
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{b64url(signature)}"


@dataclass
class Issuer:
    url: str = "https://issuer.example.org/"
    audience: str = "https://cloud.example.org"
    rsa_private: rsa.RSAPrivateKey = field(default_factory=rsa_key)
    ec_private: ec.EllipticCurvePrivateKey = field(default_factory=ec_key)
    #: kid -> key; what the JWKS publishes
    keys: dict[str, PrivateKey] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    #: mint tokens at the current time instead of NOW: for tokens a running app verifies
    #: against its own clock (a long test session outlives NOW + the tokens' lifetime)
    live_clock: bool = False

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = {"rsa-1": self.rsa_private, "ec-1": self.ec_private}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [jwk(kid, key) for kid, key in self.keys.items()]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        default = datetime.now(UTC) if self.live_clock else NOW
        now = int(default.timestamp()) if "now" not in overrides else int(overrides.pop("now"))
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "sub": "jane-0001",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "preferred_username": "jane",
            "scope": "openid compute.read compute.create",
            "wlcg.groups": ["/atlas", "/atlas/admins"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        *,
        alg: str = "RS256",
        kid: str | None = None,
        key: PrivateKey | bytes | None = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        if kid is None:
            kid = "rsa-1" if alg == "RS256" else "ec-1"
        if key is None and alg in ("RS256", "ES256"):
            key = self.keys.get(kid) or (self.rsa_private if alg == "RS256" else self.ec_private)
        head = {"alg": alg, "typ": "JWT", "kid": kid, **(header or {})}
        return encode_jwt(head, self.claims(**claims), key)


@contextmanager
def serve_issuer(issuer: Issuer | None = None) -> Iterator[Issuer]:
    """Serve discovery and JWKS on ``http://127.0.0.1:<port>``; yields the issuer."""
    served = issuer or Issuer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.requests.append(self.path)
            if self.path == "/.well-known/openid-configuration":
                body: dict[str, Any] = {"issuer": served.url, "jwks_uri": served.url + "/jwks"}
            elif self.path == "/jwks":
                body = served.jwks()
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
