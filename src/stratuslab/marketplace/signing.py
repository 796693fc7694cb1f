"""Signing metadata entries: a detached CMS (PKCS#7) SignedData over the canonical bytes.

The signature is DER, carries the endorser certificate (and any intermediate CAs) and the
signed attributes content-type, signing-time and message-digest (SHA-256). ``openssl cms
-verify -binary -content META -inform DER -in SIG`` checks it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from stratuslab.errors import InvalidInput
from stratuslab.marketplace.certs import SigningKey
from stratuslab.marketplace.metadata import ImageMetadata, canonical_bytes


@dataclass(frozen=True)
class SignedEntry:
    """What is uploaded, stored and served: the exact metadata bytes and their signature."""

    metadata: bytes
    signature: bytes


def endorse(metadata: ImageMetadata, key: SigningKey) -> ImageMetadata:
    """The entry with its endorser block filled from the signing certificate."""
    endorser = key.endorser
    if metadata.endorser is not None and metadata.endorser != endorser:
        raise InvalidInput(
            f"the entry names endorser {metadata.endorser.subject} but the key belongs to "
            f"{endorser.subject}",
            hint="drop the endorser block: signing fills it from the certificate",
        )
    return metadata.model_copy(update={"endorser": endorser})


def sign_bytes(data: bytes, key: SigningKey) -> bytes:
    """A detached DER CMS signature over exactly ``data``."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data)
    builder = builder.add_signer(key.certificate, key.private_key, hashes.SHA256())
    for cert in key.chain:
        builder = builder.add_certificate(cert)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    return builder.sign(serialization.Encoding.DER, options)


def sign(metadata: ImageMetadata, key: SigningKey) -> SignedEntry:
    """Endorse and sign an entry: canonical bytes + detached signature."""
    data = canonical_bytes(endorse(metadata, key))
    return SignedEntry(metadata=data, signature=sign_bytes(data, key))
