"""The marketplace REST API through FastAPI's TestClient (SQLite; PostgreSQL when set)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient

from stratuslab.api import problems
from stratuslab.marketplace import app as app_module
from stratuslab.marketplace.api import router
from stratuslab.marketplace.app import build_context, create_marketplace_app
from stratuslab.marketplace.context import MarketplaceContext, MarketplaceSettings
from stratuslab.marketplace.signing import SignedEntry
from stratuslab.marketplace.truststore import TrustStore
from stratuslab.marketplace.verify import verify_entry
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


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return standard_pki(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mp(tmp_path: Path, database_url: str, pki: Pki, clock: Clock) -> Iterator[MarketplaceContext]:
    settings = MarketplaceSettings(
        data_dir=tmp_path / "mp",
        database_url=database_url,
        trust_dir=pki.trust_dir,
        max_upload_bytes=64 * 1024,
    )
    context = build_context(settings)
    context.clock = clock
    yield context
    context.close()


@pytest.fixture
def client(mp: MarketplaceContext) -> Iterator[TestClient]:
    with TestClient(create_marketplace_app(mp.settings, context=mp)) as c:
        yield c


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "disk.img")


def _json_body(signed: SignedEntry) -> dict[str, str]:
    return {
        "metadata": base64.b64encode(signed.metadata).decode(),
        "signature": base64.b64encode(signed.signature).decode(),
    }


def _upload(client: TestClient, signed: SignedEntry, status: int = 201) -> dict[str, object]:
    response = client.post("/marketplace/entries", json=_json_body(signed))
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json()
    return body


def _error(response: object) -> dict[str, str]:
    error: dict[str, str] = response.json()["error"]  # type: ignore[attr-defined]
    return error


def test_json_upload_then_read(client: TestClient, image: Path, pki: Pki) -> None:
    signed = entry_for(image, pki.jane, os="ubuntu", os_arch="x86_64", tags=["lts"])
    response = client.post("/marketplace/entries", json=_json_body(signed))
    assert response.status_code == 201, response.text
    entry = response.json()
    assert response.headers["location"] == f"/marketplace/entries/{entry['id']}"
    assert entry["status"] == "valid"
    assert entry["endorser"]["email"] == "jane@example.org"
    assert entry["tags"] == ["lts"]
    assert entry["metadata"]["os"] == "ubuntu"
    again = client.get(response.headers["location"]).json()
    assert again == entry


def test_multipart_upload(client: TestClient, image: Path, pki: Pki) -> None:
    signed = entry_for(image, pki.jane)
    response = client.post(
        "/marketplace/entries",
        files={
            "metadata": ("entry.json", signed.metadata, "application/json"),
            "signature": ("entry.p7s", signed.signature, "application/pkcs7-signature"),
        },
    )
    assert response.status_code == 201, response.text


def test_multipart_missing_part(client: TestClient, image: Path, pki: Pki) -> None:
    signed = entry_for(image, pki.jane)
    response = client.post(
        "/marketplace/entries", files={"metadata": ("entry.json", signed.metadata)}
    )
    assert response.status_code == 422
    assert "lacks the part(s) signature" in _error(response)["message"]


def test_wrong_content_type(client: TestClient) -> None:
    response = client.post(
        "/marketplace/entries", content=b"<rdf:RDF/>", headers={"content-type": "application/xml"}
    )
    assert response.status_code == 415
    error = _error(response)
    assert error["code"] == "unsupported_media_type"
    assert error["category"] == "invalid_input"
    assert "application/xml is not accepted" in error["message"]
    assert "multipart/form-data" in error["hint"]


def test_oversized_upload(client: TestClient) -> None:
    response = client.post(
        "/marketplace/entries",
        content=b"{" + b" " * (70 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    error = _error(response)
    assert error["code"] == "upload_too_large"
    assert "limit of 65536 bytes" in error["message"]


def test_oversized_chunked_upload(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    response = client.post(
        "/marketplace/entries", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"metadata": "!!!", "signature": "AA=="}, "metadata is not valid base64"),
        ({"metadata": "AA=="}, "signature: Field required"),
        ({"metadata": "AA==", "signature": "AA==", "extra": 1}, "extra: Extra inputs"),
    ],
)
def test_malformed_upload(client: TestClient, body: dict[str, object], message: str) -> None:
    response = client.post("/marketplace/entries", json=body)
    assert response.status_code == 422
    assert message in _error(response)["message"]


def test_not_json(client: TestClient) -> None:
    response = client.post(
        "/marketplace/entries", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "invalid upload" in _error(response)["message"]


def test_verification_failures_are_422(client: TestClient, image: Path, pki: Pki) -> None:
    signed = entry_for(image, make_endorser(make_ca("Rogue CA")))
    response = client.post("/marketplace/entries", json=_json_body(signed))
    assert response.status_code == 422
    error = _error(response)
    assert error["code"] == "verification_failed"
    assert "untrusted CA" in error["message"]
    assert client.get("/marketplace/entries", params={"status": "all"}).json()["total"] == 0


def test_revoked_endorser_is_refused(client: TestClient, image: Path, pki: Pki) -> None:
    pki.root.revoke(pki.jane.certificate)
    pki.refresh_crl()
    response = client.post("/marketplace/entries", json=_json_body(entry_for(image, pki.jane)))
    assert response.status_code == 422
    assert "was revoked on" in _error(response)["message"]


def test_replay_is_409(client: TestClient, image: Path, pki: Pki) -> None:
    signed = entry_for(image, pki.jane)
    _upload(client, signed)
    response = client.post("/marketplace/entries", json=_json_body(signed))
    assert response.status_code == 409
    assert _error(response)["code"] == "replayed_entry"


def test_search_and_pagination(client: TestClient, tmp_path: Path, pki: Pki) -> None:
    for i in range(5):
        img = make_image(tmp_path / f"i{i}.img", f"img {i}".encode() * 100)
        _upload(client, entry_for(img, pki.jane, created=NOW - i * DAY, title=f"T{i}",
                                  os="alma" if i % 2 else "ubuntu"))  # fmt: skip
    page = client.get("/marketplace/entries", params={"limit": 2, "offset": 1}).json()
    assert [e["title"] for e in page["items"]] == ["T1", "T2"]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
    ubuntu = client.get("/marketplace/entries", params={"os": "ubuntu", "q": "t"}).json()
    assert [e["title"] for e in ubuntu["items"]] == ["T0", "T2", "T4"]
    bad = client.get("/marketplace/entries", params={"status": "gone", "limit": 0})
    assert bad.status_code == 422
    assert "status" in _error(bad)["message"] and "limit" in _error(bad)["message"]


def test_image_endorser_and_exact_lookups(client: TestClient, image: Path, pki: Pki) -> None:
    first = _upload(client, entry_for(image, pki.jane, created=NOW - DAY))
    second = _upload(client, entry_for(image, pki.jane, deprecated="superseded"))
    identifier = first["identifier"]
    history = client.get(f"/marketplace/images/{identifier}").json()
    assert [e["id"] for e in history] == [second["id"], first["id"]]
    assert [e["status"] for e in history] == ["deprecated", "valid"]
    dn = quote("/DC=org/DC=stratuslab-test/CN=Jane Endorser", safe="")
    for who in ("jane@example.org", dn):
        by = client.get(f"/marketplace/images/{identifier}/endorsers/{who}")
        assert by.status_code == 200, by.text
        assert len(by.json()) == 2
    exact = client.get(
        f"/marketplace/images/{identifier}/endorsers/jane@example.org",
        params={"created": (NOW - DAY).isoformat()},
    ).json()
    assert [e["id"] for e in exact] == [first["id"]]
    assert client.get("/marketplace/images/not-an-id").status_code == 422
    missing = client.get("/marketplace/images/MMZu9WvwKIro-rtBQfDk4PsKO7_")
    assert missing.status_code == 404
    assert client.get("/marketplace/entries/nope").status_code == 404


def test_signed_bytes_can_be_verified_again(client: TestClient, image: Path, pki: Pki) -> None:
    signed = entry_for(image, pki.jane)
    entry = _upload(client, signed)
    served = client.get(f"/marketplace/entries/{entry['id']}/signed").json()
    metadata = base64.b64decode(served["metadata"])
    signature = base64.b64decode(served["signature"])
    assert (metadata, signature) == (signed.metadata, signed.signature)
    verify_entry(metadata, signature, TrustStore.load(pki.trust_dir), at=NOW)
    raw = client.get(f"/marketplace/entries/{entry['id']}/metadata.json")
    assert raw.content == signed.metadata
    assert raw.headers["content-type"] == "application/json"
    sig = client.get(f"/marketplace/entries/{entry['id']}/signature.p7s")
    assert sig.content == signed.signature
    assert sig.headers["content-type"] == "application/pkcs7-signature"


def test_endorsers_and_tags(client: TestClient, tmp_path: Path, pki: Pki, clock: Clock) -> None:
    a, b = (make_image(tmp_path / f"{n}.img", n.encode() * 99) for n in "ab")
    older = _upload(client, entry_for(a, pki.jane, created=NOW - 2 * DAY, tags=["base"]))
    newest = _upload(client, entry_for(b, pki.jane, created=NOW - DAY, tags=["base"],
                                       valid_until=NOW + DAY))  # fmt: skip
    endorsers = client.get("/marketplace/endorsers").json()
    assert [(e["email"], e["entries"], e["images"]) for e in endorsers] == [
        ("jane@example.org", 2, 2)
    ]
    resolved = client.get("/marketplace/tags/jane@example.org/base").json()
    assert resolved["id"] == newest["id"]
    dn = quote("/DC=org/DC=stratuslab-test/CN=Jane Endorser", safe="/")
    assert client.get(f"/marketplace/tags/{dn}/base").json()["id"] == newest["id"]
    clock.now = NOW + 2 * DAY  # b expires; the tag falls back to a
    assert client.get("/marketplace/tags/jane@example.org/base").json()["id"] == older["id"]
    assert client.get("/marketplace/tags/jane@example.org/nope").status_code == 404


def test_no_trust_store_means_no_uploads(tmp_path: Path, image: Path, pki: Pki) -> None:
    settings = MarketplaceSettings(data_dir=tmp_path / "plain")
    with TestClient(create_marketplace_app(settings)) as client:
        response = client.post("/marketplace/entries", json=_json_body(entry_for(image, pki.jane)))
        assert response.status_code == 503
        assert "--trust-dir" in _error(response)["hint"]
        assert client.get("/marketplace/entries").json()["total"] == 0


def test_router_mounts_into_another_app(mp: MarketplaceContext, image: Path, pki: Pki) -> None:
    app = FastAPI()
    problems.install(app)
    app.include_router(router, prefix="/api/v1")
    with TestClient(app) as client:
        response = client.get("/api/v1/marketplace/entries")
        assert response.status_code == 503
        app.state.marketplace = mp
        _ = client.post("/api/v1/marketplace/entries", json=_json_body(entry_for(image, pki.jane)))
        assert client.get("/api/v1/marketplace/entries").json()["total"] == 1


def test_openapi_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/marketplace/openapi.json").json()["paths"]
    assert {
        "/marketplace/entries",
        "/marketplace/entries/{entry_id}",
        "/marketplace/entries/{entry_id}/signed",
        "/marketplace/images/{identifier}",
        "/marketplace/endorsers",
    } <= set(paths)


def test_main_wires_settings(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    args = ["--data-dir", str(tmp_path / "d"), "--trust-dir", str(pki.trust_dir), "--port", "9999"]
    result = CliRunner().invoke(app_module.main, args)
    assert result.exit_code == 0, result.output
    assert seen["port"] == 9999
    assert isinstance(seen["app"], FastAPI)
    assert (tmp_path / "d" / "marketplace.db").exists()
    seen["app"].state.marketplace.close()  # type: ignore[attr-defined]


def test_main_reports_a_bad_trust_dir(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path / "d"), "--trust-dir", str(tmp_path / "missing")]
    result = CliRunner().invoke(app_module.main, args)
    assert result.exit_code == 1
    assert "is not a directory" in result.output
