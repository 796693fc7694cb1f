"""Trust stores laid out like ``/etc/grid-security/certificates``.

* CA certificates: ``<hash>.<n>`` (``<n>`` a digit) and ``*.pem`` (not ``*.crl.pem``), PEM or
  DER, several certificates per file allowed. Every one is a trust anchor, intermediate or
  root (as in the grid, where IGTF distributes both).
* CRLs: ``<hash>.r<n>`` (as written by ``fetch-crl``) and ``*.crl.pem``, PEM or DER.
* Everything else (``*.signing_policy``, ``*.namespaces``, ``*.info``...) is ignored.

An unreadable CA file is skipped (its CA is then simply not trusted) and listed in
``problems``; an unreadable CRL makes every verification fail, since a revocation could hide
in it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from stratuslab.errors import InvalidInput

_CA_RE = re.compile(r"^[^.]+\.\d+$")
_CRL_RE = re.compile(r"^[^.]+\.r\d+$")


@dataclass(frozen=True)
class TrustStore:
    directory: Path
    anchors: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    unreadable_crls: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def load(cls, directory: Path) -> TrustStore:
        directory = Path(directory)
        if not directory.is_dir():
            raise InvalidInput(
                f"trust store {directory} is not a directory",
                hint="point trust_dir at a directory of CA certificates and CRLs "
                "(like /etc/grid-security/certificates)",
            )
        anchors: dict[bytes, x509.Certificate] = {}
        crls: list[x509.CertificateRevocationList] = []
        bad_crls: list[str] = []
        problems: list[str] = []
        for path in sorted(directory.iterdir()):
            kind = file_kind(path.name)
            if kind == "ca":
                _add_certs(path, anchors, problems)
            elif kind == "crl":
                crl = _load_crl(path)
                if crl is None:
                    bad_crls.append(path.name)
                else:
                    crls.append(crl)
        return cls(
            directory, tuple(anchors.values()), tuple(crls), tuple(bad_crls), tuple(problems)
        )

    def issuers_of(self, cert: x509.Certificate) -> list[x509.Certificate]:
        """Trusted CAs whose subject is ``cert``'s issuer (signature not yet checked)."""
        return [a for a in self.anchors if a.subject == cert.issuer]

    def is_anchor(self, cert: x509.Certificate) -> bool:
        return any(a == cert for a in self.anchors)

    def crls_of(self, ca: x509.Certificate) -> list[x509.CertificateRevocationList]:
        """CRLs issued by ``ca`` whose signature verifies with its key."""
        return [
            crl
            for crl in self.crls
            if crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        ]


def file_kind(name: str) -> str | None:
    """``"ca"``, ``"crl"`` or ``None`` (ignored) for a file name in a trust directory."""
    if name.endswith(".crl.pem") or _CRL_RE.fullmatch(name):
        return "crl"
    if name.endswith(".pem") or _CA_RE.fullmatch(name):
        return "ca"
    return None


def _add_certs(path: Path, into: dict[bytes, x509.Certificate], problems: list[str]) -> None:
    try:
        data = path.read_bytes()
        certs = (
            x509.load_pem_x509_certificates(data)
            if b"-----BEGIN" in data
            else [x509.load_der_x509_certificate(data)]
        )
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name}: not a certificate ({exc})")
        return
    for cert in certs:
        into.setdefault(cert.fingerprint(hashes.SHA256()), cert)


def _load_crl(path: Path) -> x509.CertificateRevocationList | None:
    try:
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except (OSError, ValueError):
        return None


class TrustStoreCache:
    """Loads a trust directory once and again only when a file in it changes
    (``fetch-crl`` and CA updates are picked up without a restart)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._store: TrustStore | None = None

    def get(self) -> TrustStore:
        stamp = self._fingerprint()
        with self._lock:
            if self._store is None or stamp != self._stamp:
                self._store = TrustStore.load(self.directory)
                self._stamp = stamp
            return self._store

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        try:
            entries = sorted(self.directory.iterdir())
            stats = ((p.name, p.stat()) for p in entries if file_kind(p.name) is not None)
            return tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats)
        except OSError:
            return ()
