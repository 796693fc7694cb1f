"""Replication between two marketplaces: a central one served by uvicorn on a loopback port,
and a site one in process (``LocalSink``) or behind FastAPI's TestClient (``RemoteSink``)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from stratuslab.client.marketplace import MarketplaceClient
from stratuslab.errors import StratusError
from stratuslab.marketplace import service
from stratuslab.marketplace.app import build_context, create_marketplace_app
from stratuslab.marketplace.context import MarketplaceContext, MarketplaceSettings
from stratuslab.marketplace.imagelist import export_image_list, import_image_list
from stratuslab.marketplace.metadata import build_metadata
from stratuslab.marketplace.replication import LocalSink, RemoteSink, replicate
from stratuslab.marketplace.schemas import Feed
from tests.marketplace_pki import (
    CA,
    DAY,
    NOW,
    Pki,
    entry_for,
    install,
    make_ca,
    make_endorser,
    make_image,
    standard_pki,
)


@dataclass
class Central:
    url: str
    mp: MarketplaceContext
    client: MarketplaceClient
    pki: Pki
    other_ca: CA


def _serve(mp: MarketplaceContext) -> Iterator[str]:
    app = create_marketplace_app(mp.settings, context=mp)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    pki = standard_pki(tmp_path / "central")
    other = make_ca("Other CA")
    install(pki.trust_dir, other)  # the central trusts a CA the site does not
    settings = MarketplaceSettings(data_dir=tmp_path / "central-mp", trust_dir=pki.trust_dir)
    mp = build_context(settings)
    try:
        for url in _serve(mp):
            with MarketplaceClient(url) as client:
                yield Central(url, mp, client, pki, other)
    finally:
        mp.close()


@pytest.fixture
def site(tmp_path: Path, central: Central) -> Iterator[MarketplaceContext]:
    trust = tmp_path / "site-trust"
    install(trust, central.pki.root, crl=True)
    mp = build_context(MarketplaceSettings(data_dir=tmp_path / "site-mp", trust_dir=trust))
    yield mp
    mp.close()


@pytest.fixture
def published(central: Central, tmp_path: Path) -> dict[str, list[str]]:
    """Entries on the central marketplace: history of one image, a deprecation, a second
    endorser, an image-list import, and an entry by a CA the site does not trust."""
    jane, root = central.pki.jane, central.pki.root
    bob = make_endorser(root, "Bob Builder", email="bob@example.org")
    mallory = make_endorser(central.other_ca, "Mallory", email="mallory@example.org")
    images = [make_image(tmp_path / f"img{i}.raw", f"image {i} ".encode() * 999) for i in range(3)]
    uploads = [
        entry_for(images[0], jane, created=NOW - 3 * DAY, tags=["series"], os="debian"),
        entry_for(images[0], jane, created=NOW - 2 * DAY, tags=["series"], os="debian"),
        entry_for(images[0], bob, created=NOW - 2 * DAY),
        entry_for(images[1], jane, created=NOW - DAY, deprecated="broken network"),
        entry_for(images[2], mallory, created=NOW - DAY),
    ]
    ids: dict[str, list[str]] = {"trusted": [], "untrusted": []}
    for signed in uploads:
        entry = central.client.upload(signed.metadata, signed.signature)
        kind = "untrusted" if entry.endorser.email == "mallory@example.org" else "trusted"
        ids[kind].append(entry.id)
    meta = build_metadata(
        images[2], format="raw", description="listed", locations=[images[2].as_uri()],
        created=NOW - DAY,
    )  # fmt: skip
    message = export_image_list(
        [meta], jane, version="1", title="t", description="d", uri="https://x/", created=NOW - DAY
    )
    report = import_image_list(message, LocalSink(central.mp), central.mp.trust(), at=NOW)
    assert len(report.stored) == 1
    return ids


Row = tuple[str, str, datetime, bytes, bytes]


def _rows(mp: MarketplaceContext) -> list[Row]:
    with mp.sessions() as session:
        found = service.feed(session, since=None, after=None, limit=1000)
        return sorted(
            (e.identifier, e.endorser_key, e.created, e.metadata_bytes, e.signature) for e in found
        )


def _trusted(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r[1] != "mallory@example.org"]


# -- tests ---------------------------------------------------------------------------------


def test_site_pulls_everything_it_can_verify_and_is_idempotent(
    central: Central, site: MarketplaceContext, published: dict[str, list[str]]
) -> None:
    report = replicate(central.client, LocalSink(site), page_size=2)
    assert report.fetched == 6
    assert report.stored == 5 and report.held == 0 and report.skipped == 0
    [(failed_id, reason)] = report.failed
    assert failed_id == published["untrusted"][0]
    assert "untrusted CA" in reason
    # the full history, byte for byte: signed entries and the image-list one
    assert _rows(site) == _trusted(_rows(central.mp))
    assert report.last_uploaded is not None

    again = replicate(central.client, LocalSink(site), page_size=4)
    assert (again.fetched, again.stored, again.held, again.skipped) == (6, 0, 5, 0)
    assert len(again.failed) == 1
    assert _rows(site) == _trusted(_rows(central.mp))


def test_incremental_sync_from_the_last_time(
    central: Central, site: MarketplaceContext, published: dict[str, list[str]], tmp_path: Path
) -> None:
    first = replicate(central.client, LocalSink(site))
    image = make_image(tmp_path / "new.raw", b"new image" * 500)
    signed = entry_for(image, central.pki.jane)
    central.client.upload(signed.metadata, signed.signature)
    exact = replicate(
        central.client, LocalSink(site), since=first.last_uploaded, overlap=timedelta(0)
    )
    # since is inclusive: the last entry seen comes again, and is held
    assert (exact.fetched, exact.stored, exact.held) == (2, 1, 1)
    assert len(_rows(site)) == 6
    # with the default overlap, what was stored in the last minute is seen again, and held
    overlapping = replicate(central.client, LocalSink(site), since=exact.last_uploaded)
    assert overlapping.stored == 0 and overlapping.held == 6


def test_a_newer_entry_at_the_site_makes_older_ones_skipped(
    central: Central, site: MarketplaceContext, published: dict[str, list[str]], tmp_path: Path
) -> None:
    image = make_image(tmp_path / "img1.raw", b"image 1 " * 999)
    newer = entry_for(image, central.pki.jane, created=NOW)
    LocalSink(site).put(newer.metadata, newer.signature)
    report = replicate(central.client, LocalSink(site))
    assert report.skipped == 1  # the central's deprecation of img1 is older than the site's
    assert report.stored == 4


def test_tampered_entries_are_refused_and_nothing_partial_is_stored(
    central: Central, site: MarketplaceContext, published: dict[str, list[str]]
) -> None:
    class Tampering:
        def feed(
            self, *, after: str | None = None, since: datetime | None = None, limit: int = 100
        ) -> Feed:
            page = central.client.feed(after=after, since=since, limit=limit)
            first = page.items[0]
            data = bytearray(base64.b64decode(first.metadata))
            data[data.index(b'"description":"') + 16] ^= 0x01
            changed = first.model_copy(update={"metadata": base64.b64encode(data).decode()})
            return page.model_copy(update={"items": [changed, *page.items[1:]]})

    report = replicate(Tampering(), LocalSink(site), page_size=100)
    assert len(report.failed) == 2
    assert "digest mismatch" in report.failed[0][1]
    assert len(_rows(site)) == 4


def test_relay_to_a_marketplace_over_http(
    central: Central, site: MarketplaceContext, published: dict[str, list[str]]
) -> None:
    with TestClient(create_marketplace_app(site.settings, context=site)) as http:
        target = MarketplaceClient("http://testserver", http=http)
        report = replicate(central.client, RemoteSink(target))
        assert (report.stored, report.held, len(report.failed)) == (5, 0, 1)
        again = replicate(central.client, RemoteSink(target))
        assert (again.stored, again.held, again.skipped) == (0, 5, 0)
    assert _rows(site) == _trusted(_rows(central.mp))


def test_unreachable_source(site: MarketplaceContext) -> None:
    with (
        MarketplaceClient("http://127.0.0.1:9") as nowhere,
        pytest.raises(StratusError, match="cannot reach the marketplace"),
    ):
        replicate(nowhere, LocalSink(site))


def test_feed_pages_and_cursor(central: Central, published: dict[str, list[str]]) -> None:
    page = central.client.feed(limit=4)
    assert len(page.items) == 4 and page.next == page.items[-1].cursor
    rest = central.client.feed(after=page.next, limit=4)
    assert len(rest.items) == 2 and rest.next is None
    ids = [i.entry_id for i in (*page.items, *rest.items)]
    assert len(set(ids)) == 6
    with pytest.raises(StratusError, match="not a feed cursor"):
        central.client.feed(after="yesterday")
