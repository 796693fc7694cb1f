"""Marketplace queries: small functions, explicit ``select()`` statements; they flush, the
caller commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from stratuslab.marketplace.models import MarketplaceEntry, MarketplaceHead, MarketplaceTag
from stratuslab.marketplace.policy import EntryStatus
from stratuslab.marketplace.verify import VerifiedEntry

E = MarketplaceEntry
T = TypeVar("T")


@dataclass(frozen=True)
class SearchFilter:
    endorser: str | None = None
    os: str | None = None
    arch: str | None = None
    kind: str | None = None
    tag: str | None = None
    status: EntryStatus | None = EntryStatus.VALID  # None: every status
    text: str | None = None
    identifier: str | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class EndorserRow:
    key: str
    email: str | None
    subject: str
    issuer: str
    entries: int
    images: int
    latest: datetime


def endorser_is(endorser: str) -> ColumnElement[bool]:
    """Rows of an endorser named by email (any case) or subject DN."""
    return or_(
        E.endorser_key == endorser,
        E.endorser_email == endorser.lower(),
        E.endorser_dn == endorser,
    )


def status_is(status: EntryStatus, now: datetime) -> ColumnElement[bool]:
    if status is EntryStatus.DEPRECATED:
        return E.deprecated.is_not(None)
    live = E.deprecated.is_(None)
    if status is EntryStatus.EXPIRED:
        return and_(live, E.valid_until.is_not(None), E.valid_until <= now)
    return and_(live, or_(E.valid_until.is_(None), E.valid_until > now))


def head_for_update(session: Session, identifier: str, key: str) -> MarketplaceHead | None:
    stmt = select(MarketplaceHead).where(
        MarketplaceHead.identifier == identifier, MarketplaceHead.endorser_key == key
    )
    return session.scalars(stmt.with_for_update()).one_or_none()


def add_entry(
    session: Session, verified: VerifiedEntry, head: MarketplaceHead | None, now: datetime
) -> MarketplaceEntry:
    """Insert the entry and its tags, and point the (image, endorser) head at it."""
    meta, endorser = verified.metadata, verified.endorser
    entry = MarketplaceEntry(
        identifier=meta.identifier,
        endorser_key=endorser.key,
        endorser_email=endorser.email.lower() if endorser.email else None,
        endorser_dn=endorser.subject,
        endorser_issuer=endorser.issuer,
        created=meta.created,
        valid_until=meta.valid_until,
        deprecated=meta.deprecated,
        kind=meta.kind,
        format=meta.format,
        os=meta.os,
        os_version=meta.os_version,
        os_arch=meta.os_arch,
        title=meta.title,
        description=meta.description,
        sha1=meta.checksums.sha1,
        metadata_bytes=verified.metadata_bytes,
        signature=verified.signature,
        uploaded_at=now,
    )
    session.add(entry)
    session.flush()
    session.add_all(MarketplaceTag(entry_id=entry.id, tag=t) for t in sorted(set(meta.tags)))
    if head is None:
        session.add(
            MarketplaceHead(
                identifier=entry.identifier,
                endorser_key=entry.endorser_key,
                entry_id=entry.id,
                created=entry.created,
            )
        )
    else:
        head.entry_id, head.created = entry.id, entry.created
    session.flush()
    return entry


def search(session: Session, f: SearchFilter, now: datetime) -> tuple[list[MarketplaceEntry], int]:
    """The newest entry of each (image, endorser) matching ``f``: one page and the total.

    The filtering and the sort carry entry ids only; the page's rows are loaded afterwards
    (sorting whole rows, signed bytes included, costs more than the search itself).
    """
    ids_query = _filtered(
        select(E.id).join(MarketplaceHead, MarketplaceHead.entry_id == E.id), f, now
    )
    ordered = ids_query.order_by(E.created.desc(), E.identifier, E.endorser_key)
    ids = list(session.scalars(ordered.limit(f.limit).offset(f.offset)))
    if f.offset == 0 and len(ids) < f.limit:
        total = len(ids)
    else:
        total = session.scalar(select(func.count()).select_from(ids_query.subquery())) or 0
    if not ids:
        return [], total
    rows = {e.id: e for e in session.scalars(select(E).where(E.id.in_(ids)))}
    return [rows[i] for i in ids], total


def _filtered(stmt: Select[T], f: SearchFilter, now: datetime) -> Select[T]:
    if f.tag is not None:
        stmt = stmt.join(MarketplaceTag, MarketplaceTag.entry_id == E.id).where(
            MarketplaceTag.tag == f.tag
        )
    conditions: list[ColumnElement[bool]] = []
    if f.endorser is not None:
        conditions.append(endorser_is(f.endorser))
    if f.os is not None:
        conditions.append(func.lower(E.os) == f.os.lower())
    if f.arch is not None:
        conditions.append(func.lower(E.os_arch) == f.arch.lower())
    if f.kind is not None:
        conditions.append(E.kind == f.kind)
    if f.identifier is not None:
        conditions.append(E.identifier == f.identifier)
    if f.status is not None:
        conditions.append(status_is(f.status, now))
    if f.text:
        needle = f.text.lower()
        conditions.append(
            or_(
                func.lower(E.title).contains(needle, autoescape=True),
                func.lower(E.description).contains(needle, autoescape=True),
            )
        )
    return stmt.where(*conditions)


def history(session: Session, identifier: str, endorser: str | None = None) -> list[E]:
    """Every entry of an image (optionally of one endorser), newest first."""
    stmt = select(E).where(E.identifier == identifier)
    if endorser is not None:
        stmt = stmt.where(endorser_is(endorser))
    return list(session.scalars(stmt.order_by(E.created.desc(), E.endorser_key)))


def newest_per_endorser(session: Session, identifier: str) -> list[E]:
    stmt = (
        select(E)
        .join(MarketplaceHead, MarketplaceHead.entry_id == E.id)
        .where(E.identifier == identifier)
        .order_by(E.created.desc())
    )
    return list(session.scalars(stmt))


def by_id(session: Session, entry_id: str) -> E | None:
    return session.get(E, entry_id)


def exact(session: Session, identifier: str, endorser: str, created: datetime) -> E | None:
    stmt = select(E).where(E.identifier == identifier, endorser_is(endorser), E.created == created)
    return session.scalars(stmt).first()


def tagged_heads(session: Session, endorser: str, tag: str) -> list[E]:
    """Newest entries of ``endorser`` carrying ``tag``, newest first."""
    stmt = (
        select(E)
        .join(MarketplaceHead, MarketplaceHead.entry_id == E.id)
        .join(MarketplaceTag, MarketplaceTag.entry_id == E.id)
        .where(MarketplaceTag.tag == tag, endorser_is(endorser))
        .order_by(E.created.desc())
    )
    return list(session.scalars(stmt))


def endorsers(session: Session) -> list[EndorserRow]:
    stats = (
        select(
            E.endorser_key,
            func.count(E.id),
            func.count(func.distinct(E.identifier)),
            func.max(E.created),
        )
        .group_by(E.endorser_key)
        .order_by(E.endorser_key)
    )
    rows = []
    for key, entries, images, latest in session.execute(stats):
        newest = session.scalars(
            select(E).where(E.endorser_key == key, E.created == latest).limit(1)
        ).one()
        rows.append(
            EndorserRow(
                key=key,
                email=newest.endorser_email,
                subject=newest.endorser_dn,
                issuer=newest.endorser_issuer,
                entries=entries,
                images=images,
                latest=newest.created,
            )
        )
    return rows


def feed(session: Session, position: tuple[datetime, str] | None, limit: int) -> list[E]:
    """Entries after ``position`` (``uploaded_at``, id) in that order."""
    stmt = select(E)
    if position is not None:
        when, entry_id = position
        stmt = stmt.where(or_(E.uploaded_at > when, and_(E.uploaded_at == when, E.id > entry_id)))
    return list(session.scalars(stmt.order_by(E.uploaded_at, E.id).limit(limit)))
