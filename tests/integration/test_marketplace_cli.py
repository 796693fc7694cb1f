"""The marketplace CLI through click's CliRunner, against a marketplace mounted like the
controller's (``/api/v1/marketplace``) behind FastAPI's TestClient; ``sync`` pulls from a
second marketplace served by uvicorn on a loopback port."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pytest
import uvicorn
from click.testing import CliRunner, Result
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from stratuslab.api import problems
from stratuslab.cli.context import AppContext
from stratuslab.cli.main import StratusGroup
from stratuslab.cli.marketplace import GROUPS, register
from stratuslab.client import StratusClient
from stratuslab.client.marketplace import MarketplaceClient
from stratuslab.config import ClientSettings
from stratuslab.marketplace.api import router
from stratuslab.marketplace.app import build_context, create_marketplace_app
from stratuslab.marketplace.context import MarketplaceContext, MarketplaceSettings
from stratuslab.marketplace.imagelist import split_smime
from tests.marketplace_pki import (
    DAY,
    NOW,
    Pki,
    entry_for,
    make_image,
    standard_pki,
    write_pem,
    write_pkcs12,
)

Invoke = Callable[..., Result]


@click.group(cls=StratusGroup)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def root(ctx: click.Context, as_json: bool) -> None:
    ctx.ensure_object(AppContext).json = as_json


@root.group("image")
def image_group() -> None:
    """Images (the marketplace commands only, here)."""


register(image_group)
for group in GROUPS:
    root.add_command(group)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return standard_pki(tmp_path)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".state"))
    monkeypatch.setenv("STRATUS_CONFIG", str(home / ".config" / "stratuslab" / "config.toml"))
    for name in ("STRATUS_MARKETPLACE", "STRATUS_TRUST_DIR", "STRATUS_KEY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return home


def _controller_like(mp: MarketplaceContext) -> FastAPI:
    app = FastAPI()
    app.state.marketplace = mp
    problems.install(app)
    api = APIRouter(prefix="/api/v1")
    api.include_router(router)
    app.include_router(api)
    return app


@pytest.fixture
def mp(tmp_path: Path, pki: Pki) -> Iterator[MarketplaceContext]:
    context = build_context(MarketplaceSettings(data_dir=tmp_path / "mp", trust_dir=pki.trust_dir))
    yield context
    context.close()


@pytest.fixture
def invoke(mp: MarketplaceContext, home: Path) -> Iterator[Invoke]:
    with TestClient(_controller_like(mp)) as http:

        def factory(settings: ClientSettings) -> StratusClient:
            return StratusClient("http://testserver", http=http)

        def run(*args: str) -> Result:
            app = AppContext(client_factory=factory)
            return CliRunner().invoke(root, list(args), obj=app, catch_exceptions=False)

        yield run


@pytest.fixture
def creds(tmp_path: Path, pki: Pki) -> list[str]:
    return ["--p12", str(write_pkcs12(tmp_path / "usercred.p12", pki.jane)), "--password", "secret"]


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + result.stderr
    return result


def _json(result: Result) -> Any:
    return json.loads(_ok(result).stdout)


# -- the endorser's workflow ---------------------------------------------------------------


def test_build_sign_validate_upload_search_show(
    invoke: Invoke, tmp_path: Path, pki: Pki, creds: list[str]
) -> None:
    image = make_image(tmp_path / "debian.qcow2", b"qcow2-ish " * 5000)
    built = _json(invoke(
        "--json", "image", "build-metadata", str(image), "-d", "Debian 12 base",
        "--os", "debian", "--os-version", "12", "--arch", "x86_64", "--tag", "debian-12",
        "--location", "https://images.example.org/debian.qcow2", "--valid-for", "30",
    ))  # fmt: skip
    meta_file = Path(built[0]["metadata"])
    assert meta_file == tmp_path / "debian.qcow2.json"
    identifier = built[0]["identifier"]
    document = json.loads(meta_file.read_text())
    assert document["format"] == "qcow2" and document["tags"] == ["debian-12"]

    assert _json(invoke("--json", "image", "validate", str(meta_file)))["canonical"].startswith(
        "no"
    )
    signed = _json(invoke("--json", "image", "sign", str(meta_file), *creds))
    assert signed["endorser"] == "jane@example.org"
    signature = tmp_path / "debian.qcow2.p7s"
    assert signed["signature"] == str(signature)
    checked = _json(invoke(
        "--json", "image", "validate", str(meta_file), "--signature", str(signature),
        "--trust-dir", str(pki.trust_dir),
    ))  # fmt: skip
    assert checked["signature"] == "valid" and checked["status"] == "valid"

    entry = _json(invoke("--json", "image", "upload", str(meta_file), str(signature)))
    assert entry["identifier"] == identifier

    table = _ok(invoke("image", "search", "--os", "debian")).stdout
    assert identifier in table and "jane@example.org" in table
    page = _json(invoke("--json", "image", "search", "--tag", "debian-12", "--arch", "x86_64"))
    assert [e["identifier"] for e in page["items"]] == [identifier]
    assert _json(invoke("--json", "image", "search", "--os", "windows"))["total"] == 0

    by_id = _json(invoke("--json", "image", "show-entry", entry["id"]))
    assert by_id["metadata"]["os_version"] == "12"
    history = _json(invoke("--json", "image", "show-entry", identifier))
    assert [e["id"] for e in history] == [entry["id"]]
    resolved = _json(invoke("--json", "image", "show-entry", "jane@example.org/debian-12"))
    assert resolved["id"] == entry["id"]
    fields = _ok(invoke("image", "show-entry", entry["id"])).stdout
    assert "Debian 12 base" in fields


def test_tag_then_deprecate_then_policy_refuses(
    invoke: Invoke, tmp_path: Path, pki: Pki, creds: list[str], mp: MarketplaceContext
) -> None:
    image = make_image(tmp_path / "disk.img")
    signed = entry_for(image, pki.jane, created=_past())
    (tmp_path / "e.json").write_bytes(signed.metadata)
    (tmp_path / "e.p7s").write_bytes(signed.signature)
    identifier = _json(invoke("--json", "image", "upload", str(tmp_path / "e.json"),
                              str(tmp_path / "e.p7s")))["identifier"]  # fmt: skip

    accepted = _json(invoke("--json", "policy", "check", identifier))
    assert accepted == {"image": identifier, "accepted": True, "endorser": "jane@example.org"}

    tagged = _json(invoke("--json", "image", "tag", identifier, "stable", *creds))
    assert tagged["tags"] == ["stable"]
    assert (
        _json(invoke("--json", "image", "show-entry", "jane@example.org/stable"))["id"]
        == (tagged["id"])
    )

    deprecated = _json(
        invoke("--json", "image", "deprecate", identifier, "--reason", "CVE-2024-1", *creds)
    )
    assert deprecated["status"] == "deprecated" and deprecated["tags"] == ["stable"]
    assert len(_json(invoke("--json", "image", "show-entry", identifier))) == 3
    listed = _json(invoke("--json", "image", "search", "--status", "deprecated"))
    assert [e["id"] for e in listed["items"]] == [deprecated["id"]]

    refused = invoke("policy", "check", identifier)
    assert refused.exit_code == 5
    assert "refuse_deprecated" in refused.stderr and "CVE-2024-1" in refused.stderr
    policy = tmp_path / "policy.toml"
    policy.write_text("[policy]\nrefuse_deprecated = false\ndeny_endorsers = []\n")
    _ok(invoke("policy", "check", identifier, "--policy", str(policy)))
    policy.write_text(
        '[policy]\nrefuse_deprecated = false\ndeny_endorsers = ["jane@example.org"]\n'
    )
    denied = invoke("policy", "check", identifier, "--policy", str(policy))
    assert denied.exit_code == 5 and "deny_endorsers" in denied.stderr
    unknown = invoke("policy", "check", "A" * 27)
    assert unknown.exit_code == 5 and "require_signature" in unknown.stderr


def _past() -> datetime:
    return NOW - DAY


def test_credentials_and_bad_input(invoke: Invoke, tmp_path: Path, pki: Pki) -> None:
    image = make_image(tmp_path / "disk.img")
    meta_file = Path(_json(invoke("--json", "image", "build-metadata", str(image), "-d", "x"))[0]
                     ["metadata"])  # fmt: skip
    missing = invoke("image", "sign", str(meta_file))
    assert missing.exit_code == 2 and "--p12 FILE, or --key FILE and --cert FILE" in missing.stderr
    key, cert = write_pem(tmp_path, pki.jane)
    _ok(invoke("image", "sign", str(meta_file), "--key", str(key), "--cert", str(cert)))
    data = bytearray(meta_file.read_bytes())
    data[data.index(b'"description":"x"') + 15] = ord("y")
    meta_file.write_bytes(bytes(data))
    signature = str(meta_file.with_suffix(".p7s"))
    tampered = invoke(
        "image", "validate", str(meta_file), "--signature", signature,
        "--trust-dir", str(pki.trust_dir),
    )  # fmt: skip
    assert tampered.exit_code == 11 and "digest mismatch" in tampered.stderr
    no_format = invoke("image", "build-metadata", str(tmp_path / "usercert.pem"), "-d", "x")
    assert no_format.exit_code == 2 and "--format" in no_format.stderr
    bad = invoke("image", "show-entry", "what?")
    assert bad.exit_code == 2


# -- image lists ---------------------------------------------------------------------------


def test_imagelist_export_then_import(
    invoke: Invoke, tmp_path: Path, pki: Pki, creds: list[str]
) -> None:
    image = make_image(tmp_path / "disk.img")
    signed = entry_for(image, pki.jane, created=_past(), locations=[image.as_uri()])
    (tmp_path / "e.json").write_bytes(signed.metadata)
    (tmp_path / "e.p7s").write_bytes(signed.signature)
    identifier = _json(invoke("--json", "image", "upload", str(tmp_path / "e.json"),
                              str(tmp_path / "e.p7s")))["identifier"]  # fmt: skip
    listing = tmp_path / "site.list"
    _ok(invoke(
        "imagelist", "export", "--id", identifier, *creds, "--version", "1",
        "--uri", listing.as_uri(), "--list-id", "11111111-2222-3333-4444-555555555555",
        "-o", str(listing),
    ))  # fmt: skip
    content = json.loads(split_smime(listing.read_bytes()).contents[0])
    assert content["hv:imagelist"]["hv:images"][0]["hv:image"]["sl:identifier"] == identifier
    stdout = _ok(invoke("imagelist", "export", "--id", identifier, *creds, "--version", "1",
                        "--uri", "https://x/")).stdout  # fmt: skip
    assert stdout.startswith("MIME-Version: 1.0")

    report = _json(invoke("--json", "imagelist", "import", listing.as_uri(),
                          "--trust-dir", str(pki.trust_dir)))  # fmt: skip
    assert (report["stored"], report["failed"], report["version"]) == (1, 0, "1")
    history = _json(invoke("--json", "image", "show-entry", identifier))
    assert len(history) == 2
    assert history[0]["metadata"]["extensions"]["imagelist:version"] == "1"
    state = json.loads(
        (tmp_path / "home" / ".state" / "stratuslab" / "imagelists.json").read_text()
    )
    assert state["11111111-2222-3333-4444-555555555555"]["version"] == "1"

    stale = invoke("imagelist", "import", str(listing), "--trust-dir", str(pki.trust_dir))
    assert stale.exit_code == 4 and "not newer" in stale.stderr


# -- replication ---------------------------------------------------------------------------


def _serve(mp: MarketplaceContext) -> Iterator[str]:
    app = create_marketplace_app(mp.settings, context=mp)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_marketplace_sync_from_a_central_one(invoke: Invoke, tmp_path: Path, pki: Pki) -> None:
    central = build_context(
        MarketplaceSettings(data_dir=tmp_path / "central", trust_dir=pki.trust_dir)
    )
    try:
        for url in _serve(central):
            with MarketplaceClient(url) as client:
                for i in range(3):
                    image = make_image(tmp_path / f"{i}.img", f"image {i}".encode() * 100)
                    signed = entry_for(image, pki.jane, created=_past())
                    client.upload(signed.metadata, signed.signature)
            first = _json(invoke("--json", "marketplace", "sync", "--from", url))
            assert (first["fetched"], first["stored"], first["failed"]) == (3, 3, 0)
            again = _json(invoke("--json", "marketplace", "sync", "--from", url))
            assert (again["stored"], again["held"]) == (0, 3)
            assert _json(invoke("--json", "image", "search"))["total"] == 3
            text = _ok(invoke("marketplace", "sync", "--from", url, "--since", "2000-01-01"))
            assert "held" in text.stdout
    finally:
        central.close()
