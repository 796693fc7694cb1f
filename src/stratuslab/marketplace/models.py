"""Marketplace rows, on the project's one ``Base`` (one Alembic history for everything).

``marketplace_entries`` is append-only: a row is never updated or deleted, so the full
history of every (image, endorser) is kept with the exact signed bytes. The searchable
columns are copies of fields of those bytes. ``marketplace_heads`` points at the newest
entry of each (image, endorser) and ``marketplace_tags`` indexes the tags of entries;
both are indexes that could be rebuilt from the entries.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stratuslab.db.models import Base, TZDateTime, new_id, utcnow


class MarketplaceEntry(Base):
    __tablename__ = "marketplace_entries"
    __table_args__ = (
        UniqueConstraint("identifier", "endorser_key", "created", name="uq_marketplace_entry"),
        Index("ix_marketplace_entries_endorser", "endorser_key", "created"),
        # covers search: filter and order without reading the signed bytes
        Index(
            "ix_marketplace_entries_search",
            "created",
            "id",
            "identifier",
            "endorser_key",
            "deprecated",
            "valid_until",
            "kind",
            "os",
            "os_arch",
        ),
        Index("ix_marketplace_entries_uploaded", "uploaded_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    identifier: Mapped[str] = mapped_column(String(27), index=True)
    endorser_key: Mapped[str] = mapped_column(String(1024))
    endorser_email: Mapped[str | None] = mapped_column(String(255), nullable=True)
    endorser_dn: Mapped[str] = mapped_column(String(1024))
    endorser_issuer: Mapped[str] = mapped_column(String(1024))
    created: Mapped[datetime] = mapped_column(TZDateTime())
    valid_until: Mapped[datetime | None] = mapped_column(TZDateTime(), nullable=True)
    deprecated: Mapped[str | None] = mapped_column(Text, nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    os: Mapped[str | None] = mapped_column(String(255), nullable=True)
    os_version: Mapped[str | None] = mapped_column(String(255), nullable=True)
    os_arch: Mapped[str | None] = mapped_column(String(255), nullable=True)
    title: Mapped[str | None] = mapped_column(String(255), nullable=True)
    description: Mapped[str] = mapped_column(Text)
    sha1: Mapped[str] = mapped_column(String(40))
    metadata_bytes: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_at: Mapped[datetime] = mapped_column(TZDateTime(), default=utcnow)


class MarketplaceHead(Base):
    __tablename__ = "marketplace_heads"

    identifier: Mapped[str] = mapped_column(String(27), primary_key=True)
    endorser_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    entry_id: Mapped[str] = mapped_column(ForeignKey("marketplace_entries.id"), unique=True)
    created: Mapped[datetime] = mapped_column(TZDateTime())


class MarketplaceTag(Base):
    __tablename__ = "marketplace_tags"

    entry_id: Mapped[str] = mapped_column(ForeignKey("marketplace_entries.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
