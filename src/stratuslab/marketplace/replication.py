"""Replication: a (site) marketplace pulls every entry of another (central) one.

The source is read through its feed (``GET /marketplace/feed``: every stored entry with its
exact signed bytes, in storage order). Each entry goes to a *sink*, which verifies it before
storing it: :class:`LocalSink` calls :func:`stratuslab.marketplace.service.submit` on this
marketplace's database, :class:`RemoteSink` uploads it to a marketplace over HTTP (which calls
``submit`` there). Nothing is taken on trust from the source.

Replication is idempotent: an entry already held is counted as ``held``, one the sink refuses
as a replay (it holds a newer entry of that image and endorser) as ``skipped``; neither is a
failure. A failed entry is reported and the others go on. Each run returns the storage time
of the last entry seen; the next run starts there less :data:`OVERLAP` (entries committed
late with an earlier time are not missed; those seen twice are ``held``).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from stratuslab.client.marketplace import MarketplaceClient
from stratuslab.db.session import transaction
from stratuslab.errors import Conflict, InvalidInput, NotFound, StratusError
from stratuslab.marketplace import service
from stratuslab.marketplace.context import MarketplaceContext
from stratuslab.marketplace.imagelist import EntrySink, Outcome
from stratuslab.marketplace.metadata import parse_metadata
from stratuslab.marketplace.schemas import Feed

log = logging.getLogger(__name__)
OVERLAP = timedelta(minutes=1)
DEFAULT_PAGE = 200

__all__ = [
    "OVERLAP",
    "EntrySink",
    "FeedSource",
    "LocalSink",
    "Outcome",
    "RemoteSink",
    "SyncReport",
    "replicate",
]


class FeedSource(Protocol):
    """What replication reads: :class:`~stratuslab.client.marketplace.MarketplaceClient`."""

    def feed(
        self, *, after: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> Feed: ...


@dataclass
class SyncReport:
    fetched: int = 0
    stored: int = 0
    held: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: storage time (at the source) of the last entry seen: where the next run starts
    last_uploaded: datetime | None = None

    def count(self, outcome: Outcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


def replicate(
    source: FeedSource,
    sink: EntrySink,
    *,
    since: datetime | None = None,
    page_size: int = DEFAULT_PAGE,
    overlap: timedelta = OVERLAP,
) -> SyncReport:
    """Copy every entry of ``source`` stored since ``since`` (all when ``None``) to ``sink``."""
    report = SyncReport(last_uploaded=since)
    start = since - overlap if since is not None else None
    page = source.feed(since=start, limit=page_size)
    while True:
        for item in page.items:
            report.fetched += 1
            try:
                metadata = _b64(item.metadata, "metadata")
                signature = _b64(item.signature, "signature")
                report.count(sink.put(metadata, signature))
            except StratusError as exc:
                log.warning("entry %s not replicated: %s", item.entry_id, exc.message)
                report.failed.append((item.entry_id, exc.message))
            if report.last_uploaded is None or item.uploaded_at > report.last_uploaded:
                report.last_uploaded = item.uploaded_at
        if page.next is None or not page.items:
            return report
        page = source.feed(after=page.next, limit=page_size)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"the source sent {what} that is not base64", hint="") from exc


class LocalSink:
    """Verify and store into this marketplace's database (``service.submit``)."""

    def __init__(self, mp: MarketplaceContext) -> None:
        self.mp = mp

    def put(self, metadata: bytes, signature: bytes) -> Outcome:
        trust = self.mp.trust()
        with transaction(self.mp.sessions) as session:
            if service.holds(session, metadata, signature):
                return "held"
            try:
                service.submit(
                    session,
                    metadata,
                    signature,
                    trust=trust,
                    now=self.mp.clock(),
                    require_crls=self.mp.settings.require_crls,
                    max_clock_skew=self.mp.settings.max_clock_skew,
                )
            except Conflict as exc:
                if exc.code != "replayed_entry":
                    raise
                return "skipped"
        return "stored"


class RemoteSink:
    """Upload to a marketplace over HTTP; it verifies every entry it is given."""

    def __init__(self, client: MarketplaceClient) -> None:
        self.client = client

    def put(self, metadata: bytes, signature: bytes) -> Outcome:
        try:
            self.client.upload(metadata, signature)
        except Conflict as exc:
            if exc.code != "replayed_entry":
                raise
            return "held" if self._holds(metadata, signature) else "skipped"
        return "stored"

    def _holds(self, metadata: bytes, signature: bytes) -> bool:
        meta = parse_metadata(metadata)
        if meta.endorser is None:
            return False
        try:
            found = self.client.endorser_entries(
                meta.identifier, meta.endorser.key, created=meta.created
            )
        except NotFound:
            return False
        for entry in found:
            held = self.client.signed(entry.id)
            if held.metadata == metadata and held.signature == signature:
                return True
        return False
