"""Verifying signed metadata entries: the one place where trust is decided.

Order of checks (the first failure is reported, as a :class:`VerificationError` that says
exactly what failed):

1. the signature is a detached CMS SignedData with exactly one signer, whose certificate it
   carries; digest SHA-256/384/512;
2. the signed message digest equals the digest of the metadata bytes, and the signature over
   the signed attributes verifies with the signer's public key;
3. the certificate chains (through intermediates carried in the signature) to a CA in the
   trust store; every certificate in the chain is within its validity dates at ``at``;
4. no certificate in the chain is revoked by a CRL of its issuer found in the trust store
   (an expired CRL, or an unreadable CRL file, fails closed);
5. only then are the bytes parsed (:func:`~stratuslab.marketplace.metadata.parse_metadata`)
   and the endorser block compared with the certificate.
"""

from __future__ import annotations

import hmac
import itertools
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from stratuslab.errors import VerificationError
from stratuslab.marketplace.certs import describe, dn_string, endorser_of
from stratuslab.marketplace.cms import SignedData, SignerInfo, parse_signed_data
from stratuslab.marketplace.metadata import Endorser, ImageMetadata, parse_metadata
from stratuslab.marketplace.truststore import TrustStore

MAX_CHAIN = 8
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass(frozen=True)
class VerifiedSignature:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # signer first, trusted CA last
    endorser: Endorser


@dataclass(frozen=True)
class VerifiedEntry:
    metadata: ImageMetadata
    endorser: Endorser
    metadata_bytes: bytes
    signature: bytes
    chain: tuple[x509.Certificate, ...]


def verify_entry(
    metadata_bytes: bytes,
    signature: bytes,
    trust: TrustStore,
    *,
    at: datetime,
    require_crls: bool = False,
) -> VerifiedEntry:
    """Verify a signed entry at time ``at`` and return it parsed."""
    verified = verify_signature(metadata_bytes, signature, trust, at=at, require_crls=require_crls)
    metadata = parse_metadata(metadata_bytes)
    _check_endorser(metadata, verified.endorser)
    return VerifiedEntry(metadata, verified.endorser, metadata_bytes, signature, verified.chain)


def verify_signature(
    data: bytes,
    signature: bytes,
    trust: TrustStore,
    *,
    at: datetime,
    require_crls: bool = False,
) -> VerifiedSignature:
    """Verify a detached CMS signature over ``data`` against ``trust`` at time ``at``."""
    parsed = parse_signed_data(signature)
    signer = _single_signer(parsed)
    cert = _signer_certificate(parsed, signer)
    _check_signature(signer, cert, data)
    chain = build_chain(cert, parsed.certificates, trust)
    check_validity(chain, at)
    _check_key_usage(cert)
    check_revocation(chain, trust, at=at, require_crls=require_crls)
    return VerifiedSignature(cert, tuple(chain), endorser_of(cert))


def _single_signer(parsed: SignedData) -> SignerInfo:
    if not parsed.detached:
        raise VerificationError(
            "the signature embeds its content; a detached signature is required",
            hint="sign with the detached option (openssl cms -sign without -nodetach)",
        )
    if len(parsed.signers) != 1:
        raise VerificationError(
            f"the signature has {len(parsed.signers)} signers; exactly one is required",
            hint="each endorser uploads an entry signed by them alone",
        )
    return parsed.signers[0]


def _signer_certificate(parsed: SignedData, signer: SignerInfo) -> x509.Certificate:
    for cert in parsed.certificates:
        if signer.serial_number is not None and (
            cert.serial_number == signer.serial_number
            and cert.issuer.public_bytes() == signer.issuer_der
        ):
            return cert
        if signer.key_identifier is not None and _key_id(cert) == signer.key_identifier:
            return cert
    raise VerificationError(
        "the signature does not carry the signer's certificate",
        hint="sign without -nocerts so the endorser certificate is included",
    )


def _key_id(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return ext.value.digest


def _check_signature(signer: SignerInfo, cert: x509.Certificate, data: bytes) -> None:
    algorithm = _DIGESTS.get(signer.digest_algorithm)
    if algorithm is None:
        raise VerificationError(
            f"digest algorithm {signer.digest_algorithm} is not accepted",
            hint="sign with SHA-256, SHA-384 or SHA-512",
        )
    signed = data
    if signer.signed_attrs is not None:
        _check_attributes(signer, algorithm(), data)
        signed = signer.signed_attrs
    try:
        _verify_raw(cert, signer, signed, algorithm())
    except InvalidSignature:
        raise VerificationError(
            f"the signature value does not verify with the key of {describe(cert)}",
            hint="the signature was altered or made with another key",
        ) from None


def _check_attributes(signer: SignerInfo, algorithm: hashes.HashAlgorithm, data: bytes) -> None:
    if signer.content_type != "data":
        raise VerificationError(
            f"signed content type is {signer.content_type!r}, expected 'data'",
            hint="sign the metadata bytes as plain data",
        )
    digest = hashes.Hash(algorithm)
    digest.update(data)
    actual = digest.finalize()
    if signer.message_digest is None or not hmac.compare_digest(actual, signer.message_digest):
        signed = signer.message_digest.hex() if signer.message_digest else "none"
        raise VerificationError(
            f"digest mismatch: the metadata bytes have {algorithm.name} {actual.hex()} but "
            f"the signature covers {signed}",
            hint="the metadata was changed after signing, or belongs to another signature",
        )


def _verify_raw(
    cert: x509.Certificate, signer: SignerInfo, signed: bytes, algorithm: hashes.HashAlgorithm
) -> None:
    key = cert.public_key()
    kind = signer.signature_algorithm
    if isinstance(key, rsa.RSAPublicKey) and kind == "rsassa_pkcs1v15":
        key.verify(signer.signature, signed, padding.PKCS1v15(), algorithm)
    elif isinstance(key, rsa.RSAPublicKey) and kind == "rsassa_pss":
        salt = signer.pss_salt_length or algorithm.digest_size
        pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=salt)
        key.verify(signer.signature, signed, pss, algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey) and kind == "ecdsa":
        key.verify(signer.signature, signed, ec.ECDSA(algorithm))
    else:
        raise VerificationError(
            f"signature algorithm {kind} with a {type(key).__name__} is not supported",
            hint="sign with an RSA (PKCS#1 v1.5 or PSS) or EC key",
        )


def build_chain(
    cert: x509.Certificate, supplied: tuple[x509.Certificate, ...], trust: TrustStore
) -> list[x509.Certificate]:
    """The path from ``cert`` to a trusted CA, through the ``supplied`` intermediates."""
    chain = [cert]
    if trust.is_anchor(cert):
        return chain
    current = cert
    for _ in range(MAX_CHAIN):
        anchor = _issued_by(current, trust.issuers_of(current))
        if anchor is not None:
            return [*chain, anchor]
        candidates = [c for c in supplied if c.subject == current.issuer and c not in chain]
        parent = _issued_by(current, candidates)
        if parent is None:
            raise _untrusted(current, trust)
        _require_ca(parent)
        chain.append(parent)
        current = parent
    raise VerificationError(
        f"the certificate chain of {describe(cert)} is longer than {MAX_CHAIN}",
        hint="this is not a sensible grid certificate chain",
    )


def _issued_by(
    cert: x509.Certificate, candidates: list[x509.Certificate]
) -> x509.Certificate | None:
    for candidate in candidates:
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _untrusted(cert: x509.Certificate, trust: TrustStore) -> VerificationError:
    issuer = dn_string(cert.issuer)
    if trust.issuers_of(cert):
        message = (
            f"untrusted certificate {describe(cert)}: it names trusted CA {issuer} as issuer "
            "but that CA's key did not sign it"
        )
    elif cert.issuer == cert.subject:
        message = f"untrusted certificate {describe(cert)}: self-signed and not in the trust store"
    else:
        message = (
            f"untrusted CA: {describe(cert)} is issued by {issuer}, which is not among the "
            f"{len(trust.anchors)} CAs in {trust.directory}"
        )
    return VerificationError(
        message,
        hint="install the endorser's CA (IGTF bundle or its .pem) in the trust directory",
    )


def _require_ca(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise VerificationError(
            f"{describe(cert)} signed another certificate but is not a CA",
            hint="intermediate certificates need basicConstraints CA:TRUE",
        )


def check_validity(chain: list[x509.Certificate], at: datetime) -> None:
    """Every certificate in ``chain`` must be valid at ``at``."""
    for cert in chain:
        if at < cert.not_valid_before_utc:
            raise VerificationError(
                f"certificate {describe(cert)} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()}",
                hint="check the clock, or wait until the certificate is valid",
            )
        if at > cert.not_valid_after_utc:
            raise VerificationError(
                f"certificate {describe(cert)} expired at {cert.not_valid_after_utc.isoformat()}",
                hint="renew the certificate and sign again",
            )


def _check_key_usage(cert: x509.Certificate) -> None:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not (usage.digital_signature or usage.content_commitment):
        raise VerificationError(
            f"certificate {describe(cert)} may not sign (keyUsage lacks digitalSignature)",
            hint="sign with a personal or robot certificate meant for signing",
        )


def check_revocation(
    chain: list[x509.Certificate], trust: TrustStore, *, at: datetime, require_crls: bool
) -> None:
    """No certificate in ``chain`` is revoked by its issuer's CRL in the trust store."""
    if trust.unreadable_crls:
        raise VerificationError(
            f"cannot check revocation: unreadable CRL file(s) {', '.join(trust.unreadable_crls)} "
            f"in {trust.directory}",
            hint="run fetch-crl or remove the broken files",
        )
    for cert, issuer in itertools.pairwise(chain):
        crls = trust.crls_of(issuer)
        if not crls and require_crls:
            raise VerificationError(
                f"no CRL from CA {dn_string(issuer.subject)} in {trust.directory}",
                hint="run fetch-crl (CRLs are required by this marketplace)",
            )
        for crl in crls:
            _check_crl(crl, cert, issuer, at)


def _check_crl(
    crl: x509.CertificateRevocationList,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    at: datetime,
) -> None:
    next_update = crl.next_update_utc
    if next_update is not None and at > next_update:
        raise VerificationError(
            f"the CRL of CA {dn_string(issuer.subject)} expired at {next_update.isoformat()}",
            hint="run fetch-crl to get a current CRL",
        )
    revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if revoked is not None:
        raise VerificationError(
            f"certificate {describe(cert)} was revoked on "
            f"{revoked.revocation_date_utc.isoformat()} by CA {dn_string(issuer.subject)}",
            hint="the endorser must sign with a new, valid certificate",
        )


def _check_endorser(metadata: ImageMetadata, endorser: Endorser) -> None:
    if metadata.endorser is None:
        raise VerificationError(
            "the signed metadata has no endorser block",
            hint="sign with stratuslab.marketplace.sign(), which fills it from the certificate",
        )
    if metadata.endorser != endorser:
        raise VerificationError(
            f"the endorser block ({metadata.endorser.subject}, {metadata.endorser.email}) does "
            f"not match the signing certificate ({endorser.subject}, {endorser.email})",
            hint="re-sign: the endorser block must be filled from the signing certificate",
        )
