"""Marketplace use cases. Every function takes a session; the caller owns the transaction.

:func:`submit` (verify, then store) is the one way in for an entry: uploads call it, and so
will replication and image-list import, with the raw signed bytes they receive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratuslab.errors import Conflict, InvalidInput, NotFound
from stratuslab.marketplace import imagelist, store
from stratuslab.marketplace.ids import is_identifier
from stratuslab.marketplace.metadata import parse_metadata
from stratuslab.marketplace.models import MarketplaceEntry
from stratuslab.marketplace.policy import EntryStatus, PolicyEntry
from stratuslab.marketplace.store import EndorserRow, SearchFilter
from stratuslab.marketplace.truststore import TrustStore
from stratuslab.marketplace.verify import VerifiedEntry, verify_entry

DEFAULT_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class SearchResult:
    items: list[MarketplaceEntry]
    total: int
    limit: int
    offset: int


def submit(
    session: Session,
    metadata_bytes: bytes,
    signature: bytes,
    *,
    trust: TrustStore,
    now: datetime,
    require_crls: bool = False,
    max_clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> MarketplaceEntry:
    """Verify a signed entry at ``now`` and store it; nothing is stored if anything fails.

    ``signature`` is a detached CMS, or for an entry made from a HEPiX image list the signed
    list itself (an S/MIME message, see :mod:`stratuslab.marketplace.imagelist`).
    """
    verify = imagelist.verify_listed_entry if imagelist.is_smime(signature) else verify_entry
    verified = verify(metadata_bytes, signature, trust, at=_utc(now), require_crls=require_crls)
    return store_verified(session, verified, now=now, max_clock_skew=max_clock_skew)


def holds(session: Session, metadata_bytes: bytes, signature: bytes) -> bool:
    """Whether exactly this signed entry is already stored (replication skips it)."""
    try:
        meta = parse_metadata(metadata_bytes)
    except InvalidInput:
        return False
    if meta.endorser is None:
        return False
    entry = store.exact(session, meta.identifier, meta.endorser.key, meta.created)
    return (
        entry is not None
        and entry.metadata_bytes == metadata_bytes
        and entry.signature == signature
    )


def feed(
    session: Session, *, since: datetime | None, after: str | None, limit: int
) -> list[MarketplaceEntry]:
    """Every entry in storage order (``uploaded_at``, id), for replication.

    ``after`` is the cursor of the last entry seen (:func:`feed_cursor`); ``since`` starts
    at a storage time instead.
    """
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"bad page: limit {limit}", hint="limit is 1..1000")
    position = None
    if after is not None:
        position = parse_feed_cursor(after)
    elif since is not None:
        position = (_utc(since), "")
    return store.feed(session, position, limit)


def feed_cursor(entry: MarketplaceEntry) -> str:
    return f"{_utc(entry.uploaded_at).isoformat()}~{entry.id}"


def parse_feed_cursor(cursor: str) -> tuple[datetime, str]:
    when, _, entry_id = cursor.partition("~")
    try:
        return _utc(datetime.fromisoformat(when)), entry_id
    except ValueError as exc:
        raise InvalidInput(
            f"{cursor!r} is not a feed cursor", hint="pass the cursor a feed page returned"
        ) from exc


def store_verified(
    session: Session,
    verified: VerifiedEntry,
    *,
    now: datetime,
    max_clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> MarketplaceEntry:
    """Store an entry already verified; refuse replays and entries from the future."""
    now = _utc(now)
    meta, key = verified.metadata, verified.endorser.key
    if meta.created > now + max_clock_skew:
        raise InvalidInput(
            f"entry created {_iso(meta.created)} is in the future (now {_iso(now)})",
            hint="check the signer's clock; created is the endorsement time",
        )
    head = store.head_for_update(session, meta.identifier, key)
    if head is not None and head.created >= meta.created:
        raise Conflict(
            f"replay refused: entry for image {meta.identifier} by {key} created "
            f"{_iso(meta.created)} is not newer than the latest one ({_iso(head.created)})",
            hint="sign a new entry (created = now) to update or deprecate the image",
            code="replayed_entry",
        )
    try:
        return store.add_entry(session, verified, head, now)
    except IntegrityError as exc:
        raise Conflict(
            f"a concurrent upload for image {meta.identifier} by {key} was stored first",
            hint="retry with a newer entry",
            code="replayed_entry",
        ) from exc


def status_of(entry: MarketplaceEntry, now: datetime) -> EntryStatus:
    """valid / expired / deprecated, for an entry seen at ``now`` (deprecation wins)."""
    if entry.deprecated is not None:
        return EntryStatus.DEPRECATED
    if entry.valid_until is not None and entry.valid_until <= _utc(now):
        return EntryStatus.EXPIRED
    return EntryStatus.VALID


def search(session: Session, query: SearchFilter, *, now: datetime) -> SearchResult:
    if not 1 <= query.limit <= 1000 or query.offset < 0:
        raise InvalidInput(
            f"bad page: limit {query.limit}, offset {query.offset}",
            hint="limit is 1..1000, offset is 0 or more",
        )
    items, total = store.search(session, query, _utc(now))
    return SearchResult(items, total, query.limit, query.offset)


def image_history(
    session: Session, identifier: str, endorser: str | None = None
) -> list[MarketplaceEntry]:
    """Every entry of an image (optionally of one endorser), newest first."""
    _check_identifier(identifier)
    entries = store.history(session, identifier, endorser)
    if not entries:
        by = f" endorsed by {endorser}" if endorser is not None else ""
        raise NotFound(
            f"no marketplace entry for image {identifier}{by}",
            hint="search the marketplace, or upload a signed entry first",
        )
    return entries


def get_entry(session: Session, entry_id: str) -> MarketplaceEntry:
    entry = store.by_id(session, entry_id)
    if entry is None:
        raise NotFound(f"no marketplace entry {entry_id}", hint="list entries with a search")
    return entry


def get_exact(
    session: Session, identifier: str, endorser: str, created: datetime
) -> MarketplaceEntry:
    """The one entry addressed by (image, endorser, created)."""
    _check_identifier(identifier)
    entry = store.exact(session, identifier, endorser, _utc(created).replace(microsecond=0))
    if entry is None:
        raise NotFound(
            f"no entry for image {identifier} by {endorser} created {_iso(created)}",
            hint="list the image's entries to see their creation times",
        )
    return entry


def list_endorsers(session: Session) -> list[EndorserRow]:
    return store.endorsers(session)


def resolve_tag(session: Session, endorser: str, tag: str, *, now: datetime) -> MarketplaceEntry:
    """The newest valid entry of ``endorser`` tagged ``tag``."""
    candidates = store.tagged_heads(session, endorser, tag)
    for entry in candidates:
        if status_of(entry, now) is EntryStatus.VALID:
            return entry
    if candidates:
        raise NotFound(
            f"tag {endorser}/{tag} has no valid entry: all {len(candidates)} tagged image(s) "
            "are deprecated or expired",
            hint="ask the endorser for a new entry, or use an explicit image identifier",
        )
    raise NotFound(
        f"no image tagged {tag} by endorser {endorser}",
        hint="list the endorser's entries: GET /marketplace/entries?endorser=...",
    )


def policy_entries(session: Session, identifier: str, *, now: datetime) -> list[PolicyEntry]:
    """The newest entry of each endorser of an image, as the site policy sees them."""
    _check_identifier(identifier)
    return [policy_entry(e, now) for e in store.newest_per_endorser(session, identifier)]


def policy_entry(entry: MarketplaceEntry, now: datetime) -> PolicyEntry:
    checksums = parse_metadata(entry.metadata_bytes).checksums.values()
    return PolicyEntry(
        identifier=entry.identifier,
        endorser_email=entry.endorser_email,
        endorser_dn=entry.endorser_dn,
        checksums=frozenset(checksums),
        status=status_of(entry, now),
        trusted=True,  # verified on the way in
        deprecated_reason=entry.deprecated,
        valid_until=_iso(entry.valid_until) if entry.valid_until else None,
    )


def _check_identifier(identifier: str) -> None:
    if not is_identifier(identifier):
        raise InvalidInput(
            f"{identifier!r} is not a marketplace image identifier",
            hint="an identifier is 27 characters of A-Z a-z 0-9 - _, the first one of A-P",
        )


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")
