"""The appliance marketplace: content-addressed ids, signed and endorsed metadata entries,
verification against a grid-style trust store, and the site image policy.

The HTTP side (``marketplace.api``, ``marketplace.app``) and the database side
(``marketplace.models``, ``marketplace.store``, ``marketplace.service``) are imported on
their own; this package exports the pure core.
"""

from __future__ import annotations

from stratuslab.marketplace.certs import SigningKey, endorser_of, load_pem, load_pkcs12
from stratuslab.marketplace.ids import (
    identifier_from_digest,
    identifier_from_sha1,
    is_identifier,
    sha1_from_identifier,
)
from stratuslab.marketplace.metadata import (
    Checksums,
    Endorser,
    ImageMetadata,
    build_metadata,
    canonical_bytes,
    parse_metadata,
    schema_json,
)
from stratuslab.marketplace.policy import EntryStatus, PolicyEntry, SitePolicy, check, check_any
from stratuslab.marketplace.signing import SignedEntry, sign, sign_bytes
from stratuslab.marketplace.truststore import TrustStore, TrustStoreCache
from stratuslab.marketplace.verify import (
    VerifiedEntry,
    VerifiedSignature,
    verify_entry,
    verify_signature,
)

__all__ = [
    "Checksums",
    "Endorser",
    "EntryStatus",
    "ImageMetadata",
    "PolicyEntry",
    "SignedEntry",
    "SigningKey",
    "SitePolicy",
    "TrustStore",
    "TrustStoreCache",
    "VerifiedEntry",
    "VerifiedSignature",
    "build_metadata",
    "canonical_bytes",
    "check",
    "check_any",
    "endorser_of",
    "identifier_from_digest",
    "identifier_from_sha1",
    "is_identifier",
    "load_pem",
    "load_pkcs12",
    "parse_metadata",
    "schema_json",
    "sha1_from_identifier",
    "sign",
    "sign_bytes",
    "verify_entry",
    "verify_signature",
]
