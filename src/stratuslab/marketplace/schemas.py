"""Wire types of the marketplace API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from stratuslab.schemas.common import Wire, WireIn


class EntryUpload(WireIn):
    """A JSON upload: the exact metadata bytes and the DER signature, both base64."""

    metadata: str
    signature: str


class EntryEndorser(Wire):
    key: str
    email: str | None
    subject: str
    issuer: str


class Entry(Wire):
    id: str
    identifier: str
    endorser: EntryEndorser
    created: datetime
    valid_until: datetime | None
    status: str
    deprecated: str | None
    kind: str
    format: str
    os: str | None
    os_version: str | None
    os_arch: str | None
    title: str | None
    description: str
    tags: list[str]
    uploaded_at: datetime
    metadata: dict[str, Any]


class SignedEntry(Wire):
    """Everything needed to verify an entry again: both base64 (standard alphabet)."""

    entry_id: str
    metadata: str
    signature: str
    signature_format: str = "CMS SignedData, detached, DER"


class Endorser(Wire):
    key: str
    email: str | None
    subject: str
    issuer: str
    entries: int
    images: int
    latest: datetime


class FeedItem(Wire):
    """One stored entry for replication: the exact bytes, base64 (standard alphabet)."""

    entry_id: str
    identifier: str
    endorser: str
    created: datetime
    uploaded_at: datetime
    metadata: str
    signature: str
    cursor: str


class Feed(Wire):
    """A page of entries in storage order; ``next`` is the cursor to ask for the next page
    (``None``: this was the last page for now)."""

    items: list[FeedItem]
    next: str | None
