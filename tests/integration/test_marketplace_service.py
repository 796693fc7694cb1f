"""Marketplace use cases on a real database (SQLite; PostgreSQL when configured)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from stratuslab.db.models import Base
from stratuslab.db.session import transaction
from stratuslab.errors import Conflict, Forbidden, InvalidInput, NotFound, VerificationError
from stratuslab.marketplace import service
from stratuslab.marketplace.app import build_context
from stratuslab.marketplace.context import MarketplaceContext, MarketplaceSettings
from stratuslab.marketplace.models import MarketplaceEntry, MarketplaceHead
from stratuslab.marketplace.policy import EntryStatus, SitePolicy, check_any
from stratuslab.marketplace.signing import SignedEntry
from stratuslab.marketplace.store import SearchFilter
from tests.marketplace_pki import (
    DAY,
    NOW,
    Pki,
    entry_for,
    make_ca,
    make_endorser,
    make_image,
    standard_pki,
)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return standard_pki(tmp_path)


@pytest.fixture
def mp(tmp_path: Path, database_url: str, pki: Pki) -> Iterator[MarketplaceContext]:
    settings = MarketplaceSettings(
        data_dir=tmp_path / "mp", database_url=database_url, trust_dir=pki.trust_dir
    )
    context = build_context(settings)
    yield context
    context.close()


def _submit(mp: MarketplaceContext, signed: SignedEntry, *, now: object = None) -> str:
    with transaction(mp.sessions) as s:
        entry = service.submit(
            s, signed.metadata, signed.signature, trust=mp.trust(), now=now or NOW
        )
        return entry.id


def _count(mp: MarketplaceContext) -> int:
    with mp.sessions() as s:
        return s.scalar(select(func.count()).select_from(MarketplaceEntry)) or 0


def _images(tmp_path: Path, n: int) -> list[Path]:
    return [make_image(tmp_path / f"img{i}.raw", f"image {i} ".encode() * 500) for i in range(n)]


def test_migration_matches_the_models(mp: MarketplaceContext) -> None:
    bind = mp.sessions.kw["bind"]
    with bind.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)

    ours = [c for c in diff if "marketplace_" in repr(c)]  # other tables are not ours
    assert ours == []


def test_upload_and_read_back(mp: MarketplaceContext, tmp_path: Path, pki: Pki) -> None:
    image = make_image(tmp_path / "disk.img")
    signed = entry_for(image, pki.jane, os="ubuntu", tags=["base"])
    entry_id = _submit(mp, signed)
    with mp.sessions() as s:
        entry = service.get_entry(s, entry_id)
        assert entry.metadata_bytes == signed.metadata
        assert entry.signature == signed.signature
        assert entry.endorser_email == "jane@example.org"
        assert entry.created == NOW
        assert service.status_of(entry, NOW) is EntryStatus.VALID
        exact = service.get_exact(s, entry.identifier, "Jane@Example.org", NOW)
        assert exact.id == entry_id


def test_several_endorsers_endorse_one_image(
    mp: MarketplaceContext, tmp_path: Path, pki: Pki
) -> None:
    image = make_image(tmp_path / "disk.img")
    vo = make_endorser(pki.root, "VO Manager", email="vo@example.org")
    _submit(mp, entry_for(image, pki.jane))
    _submit(mp, entry_for(image, vo))
    with mp.sessions() as s:
        identifier = service.get_entry(s, _first_id(s)).identifier
        assert {e.endorser_email for e in service.image_history(s, identifier)} == {
            "jane@example.org",
            "vo@example.org",
        }
        assert len(service.image_history(s, identifier, "vo@example.org")) == 1
        dn = "/DC=org/DC=stratuslab-test/CN=VO Manager"
        assert len(service.image_history(s, identifier, dn)) == 1
        assert [e.key for e in service.list_endorsers(s)] == ["jane@example.org", "vo@example.org"]


def _first_id(s: Session) -> str:
    return s.scalars(select(MarketplaceEntry.id)).first() or ""


def test_replayed_entry_is_refused(mp: MarketplaceContext, tmp_path: Path, pki: Pki) -> None:
    image = make_image(tmp_path / "disk.img")
    old = entry_for(image, pki.jane, created=NOW - 2 * DAY)
    new = entry_for(image, pki.jane, created=NOW - DAY)
    _submit(mp, old)
    _submit(mp, new)
    for replay in (old, new):
        with pytest.raises(Conflict, match="replay refused") as err:
            _submit(mp, replay)
        assert err.value.code == "replayed_entry"
    assert _count(mp) == 2


def test_entries_from_the_future_are_refused(
    mp: MarketplaceContext, tmp_path: Path, pki: Pki
) -> None:
    image = make_image(tmp_path / "disk.img")
    with pytest.raises(InvalidInput, match="is in the future"):
        _submit(mp, entry_for(image, pki.jane, created=NOW + timedelta(hours=1)))
    _submit(mp, entry_for(image, pki.jane, created=NOW + timedelta(minutes=1)))  # clock skew


def test_nothing_stored_when_verification_fails(
    mp: MarketplaceContext, tmp_path: Path, pki: Pki
) -> None:
    image = make_image(tmp_path / "disk.img")
    signed = entry_for(image, make_endorser(make_ca("Rogue CA")))
    with pytest.raises(VerificationError, match="untrusted CA"):
        _submit(mp, signed)
    good = entry_for(image, pki.jane)
    with pytest.raises(VerificationError, match="digest mismatch"):
        _submit(mp, SignedEntry(good.metadata.replace(b"raw", b"qed"), good.signature))
    assert _count(mp) == 0


def test_deprecation_is_a_newer_entry(mp: MarketplaceContext, tmp_path: Path, pki: Pki) -> None:
    image = make_image(tmp_path / "disk.img")
    first = _submit(mp, entry_for(image, pki.jane, created=NOW - DAY))
    second = _submit(mp, entry_for(image, pki.jane, deprecated="use 24.04 instead"))
    with mp.sessions() as s:
        old, new = service.get_entry(s, first), service.get_entry(s, second)
        assert service.status_of(old, NOW) is EntryStatus.VALID  # history is untouched
        assert service.status_of(new, NOW) is EntryStatus.DEPRECATED
        found = service.search(s, SearchFilter(status=EntryStatus.DEPRECATED), now=NOW)
        assert [e.id for e in found.items] == [second]
        assert service.search(s, SearchFilter(), now=NOW).total == 0
        [policy_entry] = service.policy_entries(s, new.identifier, now=NOW)
    with pytest.raises(Forbidden, match=r"deprecated it: use 24.04 instead"):
        check_any([policy_entry], new.identifier, SitePolicy())


def test_expiry_follows_the_clock(mp: MarketplaceContext, tmp_path: Path, pki: Pki) -> None:
    image = make_image(tmp_path / "disk.img")
    entry_id = _submit(mp, entry_for(image, pki.jane, valid_until=NOW + DAY))
    with mp.sessions() as s:
        entry = service.get_entry(s, entry_id)
        assert service.status_of(entry, NOW) is EntryStatus.VALID
        assert service.status_of(entry, NOW + 2 * DAY) is EntryStatus.EXPIRED
        later = NOW + 2 * DAY
        assert service.search(s, SearchFilter(), now=later).total == 0
        expired = service.search(s, SearchFilter(status=EntryStatus.EXPIRED), now=later)
        assert expired.total == 1


def test_search_filters_and_pagination(mp: MarketplaceContext, tmp_path: Path, pki: Pki) -> None:
    bob = make_endorser(pki.root, "Bob", email="bob@example.org")
    images = _images(tmp_path, 6)
    for i, image in enumerate(images):
        key = pki.jane if i % 2 == 0 else bob
        _submit(
            mp,
            entry_for(
                image,
                key,
                created=NOW - timedelta(minutes=10 - i),
                os="ubuntu" if i < 3 else "alma",
                os_arch="x86_64" if i != 5 else "aarch64",
                kind="machine" if i != 4 else "disk",
                title=f"Image {i}",
                description=f"Appliance number {i} with 50%_off" if i == 1 else "plain",
                tags=["grid"] if i in (0, 2) else [],
            ),
        )
    with mp.sessions() as s:

        def ids(**kw: object) -> list[str]:
            result = service.search(s, SearchFilter(**kw), now=NOW)  # type: ignore[arg-type]
            return [e.title or "" for e in result.items]

        assert ids() == [f"Image {i}" for i in range(5, -1, -1)]
        assert ids(endorser="bob@example.org") == ["Image 5", "Image 3", "Image 1"]
        assert ids(endorser="/DC=org/DC=stratuslab-test/CN=Jane Endorser") == [
            "Image 4", "Image 2", "Image 0"]  # fmt: skip
        assert ids(os="Ubuntu") == ["Image 2", "Image 1", "Image 0"]
        assert ids(arch="aarch64") == ["Image 5"]
        assert ids(kind="disk") == ["Image 4"]
        assert ids(tag="grid") == ["Image 2", "Image 0"]
        assert ids(text="50%_OFF") == ["Image 1"]
        assert ids(text="%") == ["Image 1"]
        assert ids(text="image 3") == ["Image 3"]
        assert ids(os="ubuntu", endorser="jane@example.org", tag="grid") == ["Image 2", "Image 0"]
        page = service.search(s, SearchFilter(limit=2, offset=2), now=NOW)
        assert [e.title for e in page.items] == ["Image 3", "Image 2"]
        assert (page.total, page.limit, page.offset) == (6, 2, 2)
        with pytest.raises(InvalidInput, match="bad page"):
            service.search(s, SearchFilter(limit=0), now=NOW)


def test_tag_resolution(mp: MarketplaceContext, tmp_path: Path, pki: Pki) -> None:
    v1, v2, v3 = _images(tmp_path, 3)
    _submit(mp, entry_for(v1, pki.jane, created=NOW - 3 * DAY, tags=["ubuntu-lts"]))
    _submit(mp, entry_for(v2, pki.jane, created=NOW - 2 * DAY, tags=["ubuntu-lts"]))
    bob = make_endorser(pki.root, "Bob", email="bob@example.org")
    _submit(mp, entry_for(v3, bob, created=NOW - DAY, tags=["ubuntu-lts"]))  # other namespace
    with mp.sessions() as s:
        newest = service.resolve_tag(s, "jane@example.org", "ubuntu-lts", now=NOW)
        assert newest.title is None and newest.created == NOW - 2 * DAY
        v2_id = newest.identifier
    _submit(mp, entry_for(v2, pki.jane, created=NOW - DAY, tags=["ubuntu-lts"], deprecated="bug"))
    with mp.sessions() as s:
        fallback = service.resolve_tag(s, "jane@example.org", "ubuntu-lts", now=NOW)
        assert fallback.identifier != v2_id and fallback.created == NOW - 3 * DAY
        assert service.resolve_tag(s, "bob@example.org", "ubuntu-lts", now=NOW).endorser_key == (
            "bob@example.org"
        )
        with pytest.raises(NotFound, match="no valid entry: all 2 tagged"):
            service.resolve_tag(s, "jane@example.org", "ubuntu-lts", now=NOW + 400 * DAY)
        with pytest.raises(NotFound, match="no image tagged nope"):
            service.resolve_tag(s, "jane@example.org", "nope", now=NOW)


def test_lookups_that_find_nothing(mp: MarketplaceContext) -> None:
    with mp.sessions() as s:
        with pytest.raises(NotFound, match="no marketplace entry for image"):
            service.image_history(s, "MMZu9WvwKIro-rtBQfDk4PsKO7_")
        with pytest.raises(NotFound, match="no marketplace entry nope"):
            service.get_entry(s, "nope")
        with pytest.raises(NotFound, match="created 2026"):
            service.get_exact(s, "MMZu9WvwKIro-rtBQfDk4PsKO7_", "x@y", NOW.replace(year=2026))
        with pytest.raises(InvalidInput, match="not a marketplace image identifier"):
            service.image_history(s, "ubuntu")


def test_concurrent_uploads_keep_one_consistent_head(
    mp: MarketplaceContext, tmp_path: Path, pki: Pki
) -> None:
    image = make_image(tmp_path / "disk.img")
    entries = [entry_for(image, pki.jane, created=NOW - timedelta(minutes=m)) for m in range(8)]
    outcomes: list[str] = []

    def upload(signed: SignedEntry) -> None:
        try:
            _submit(mp, signed)
        except Conflict:
            outcomes.append("conflict")
        else:
            outcomes.append("stored")

    threads = [threading.Thread(target=upload, args=(e,)) for e in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 8 and "stored" in outcomes
    with mp.sessions() as s:
        stored = s.scalars(select(MarketplaceEntry)).all()
        assert len(stored) == outcomes.count("stored")
        [head] = s.scalars(select(MarketplaceHead)).all()
        assert head.created == max(e.created for e in stored)
