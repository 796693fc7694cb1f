"""`stratus run` with a marketplace identifier or endorser/tag: the site image policy decides,
and the node gets the entry's download locations."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stratuslab.api.app import build_ctx, create_app
from stratuslab.config import ControllerSettings
from stratuslab.marketplace.signing import SignedEntry
from tests.integration.test_api import error
from tests.integration.test_lifecycle import start_node
from tests.marketplace_pki import Pki, entry_for, make_image, standard_pki

LOCATION = "http://127.0.0.1:9/appliances/disk.img"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return standard_pki(tmp_path)


@pytest.fixture
def mp_api(settings: ControllerSettings, pki: Pki, admin_token: str) -> Iterator[TestClient]:
    trusted = replace(settings, trust_dir=str(pki.trust_dir))
    ctx = build_ctx(trusted)
    try:
        with TestClient(create_app(trusted, ctx=ctx, background=False)) as client:
            client.headers["Authorization"] = f"Bearer {admin_token}"
            yield client
    finally:
        ctx.close()


def publish(api: TestClient, signed: SignedEntry) -> dict:
    body = {
        "metadata": base64.b64encode(signed.metadata).decode(),
        "signature": base64.b64encode(signed.signature).decode(),
    }
    resp = api.post("/api/v1/marketplace/entries", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return make_image(tmp_path / "disk.img")


def test_run_by_identifier_registers_the_image_with_its_locations(
    mp_api: TestClient, pki: Pki, disk: Path
) -> None:
    token = mp_api.post("/api/v1/hosts/tokens").json()["token"]
    node = start_node(mp_api, token)
    entry = publish(mp_api, entry_for(disk, pki.jane, locations=[LOCATION], format="raw"))
    identifier = entry["metadata"]["identifier"]
    resp = mp_api.post("/api/v1/instances", json={"image": identifier, "flavor": "t1.micro"})
    assert resp.status_code == 202, resp.text
    image = mp_api.get(f"/api/v1/images/{identifier}").json()
    assert image["format"] == "raw"
    desired = node.link.desired(since=-1, wait=0)
    ref = desired.instances[0].image
    assert ref.locations == [LOCATION]
    assert ref.sha256 == entry["metadata"]["checksums"]["sha256"]
    # a second instance reuses the registration
    again = mp_api.post("/api/v1/instances", json={"image": identifier, "flavor": "t1.micro"})
    assert again.json()["instances"][0]["image_id"] == image["id"]


def test_run_by_endorser_and_tag(mp_api: TestClient, pki: Pki, disk: Path) -> None:
    token = mp_api.post("/api/v1/hosts/tokens").json()["token"]
    start_node(mp_api, token)
    entry = publish(mp_api, entry_for(disk, pki.jane, locations=[LOCATION], tags=["base"]))
    resp = mp_api.post(
        "/api/v1/instances", json={"image": "jane@example.org/base", "flavor": "t1.micro"}
    )
    assert resp.status_code == 202, resp.text
    image_id = resp.json()["instances"][0]["image_id"]
    assert (
        mp_api.get(f"/api/v1/images/{image_id}").json()["name"] == (entry["metadata"]["identifier"])
    )


def test_site_policy_refuses_with_the_rule_named(
    mp_api: TestClient, pki: Pki, disk: Path, settings: ControllerSettings
) -> None:
    entry = publish(mp_api, entry_for(disk, pki.jane, locations=[LOCATION]))
    identifier = entry["metadata"]["identifier"]
    (settings.data_dir / "image-policy.toml").write_text(
        '[policy]\ndeny_endorsers = ["jane@example.org"]\n'
    )
    resp = mp_api.post("/api/v1/instances", json={"image": identifier})
    assert resp.status_code == 403
    assert "deny_endorsers" in error(resp)["message"] + str(error(resp).get("details"))
    assert mp_api.get("/api/v1/instances").json()["total"] == 0


def test_entry_without_location_is_refused(mp_api: TestClient, pki: Pki, disk: Path) -> None:
    token = mp_api.post("/api/v1/hosts/tokens").json()["token"]
    start_node(mp_api, token)
    entry = publish(mp_api, entry_for(disk, pki.jane))
    resp = mp_api.post("/api/v1/instances", json={"image": entry["metadata"]["identifier"]})
    assert resp.status_code == 422
    assert error(resp)["code"] == "no_location"


def test_unknown_identifier_is_not_found(mp_api: TestClient) -> None:
    resp = mp_api.post("/api/v1/instances", json={"image": "MMZu9WvwKIro-rtBQfDk4PsKO7_"})
    assert resp.status_code == 404


def test_image_save_sign_publishes_the_saved_image(
    mp_api: TestClient, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stratus image save --sign`: the saved root disk becomes a signed marketplace entry
    that `stratus run IDENTIFIER` accepts under the default site policy."""
    import threading

    from click.testing import CliRunner

    from stratuslab.cli.context import AppContext
    from stratuslab.cli.main import cli
    from stratuslab.client import StratusClient
    from tests.conftest import make_qcow2
    from tests.integration.test_lifecycle import UploadingSaver, inst
    from tests.marketplace_pki import write_pkcs12

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    token = mp_api.post("/api/v1/hosts/tokens").json()["token"]
    node = start_node(mp_api, token)
    node.agent.reconciler.saver = UploadingSaver(node.link, make_qcow2(tmp_path / "s.qcow2"))
    make_qcow2(tmp_path / "base.qcow2")
    with (tmp_path / "base.qcow2").open("rb") as fh:
        assert mp_api.post("/api/v1/images", params={"name": "base"}, content=fh.read()).is_success
    mp_api.post("/api/v1/instances", json={"image": "base", "name": "gold", "flavor": "t1.micro"})
    node.settle()
    mp_api.post("/api/v1/instances/gold/actions", json={"action": "stop"})
    node.settle(lambda: inst(mp_api, "gold")["status"] == "stopped")

    done = threading.Event()

    def agent() -> None:
        while not done.is_set():
            node.agent.step(wait=0.2)

    worker = threading.Thread(target=agent)
    worker.start()
    p12 = write_pkcs12(tmp_path / "jane.p12", pki.jane)
    client = StratusClient("http://testserver", http=mp_api)
    app = AppContext(client_factory=lambda _settings: client)
    try:
        result = CliRunner().invoke(
            cli,
            ["image", "save", "gold", "--name", "gold-v1", "--sign", "--p12", str(p12),
             "--password", "secret", "--location", "https://images.example.org/gold-v1.qcow2"],
            obj=app,
        )  # fmt: skip
    finally:
        done.set()
        worker.join()
    assert result.exit_code == 0, result.output
    assert "published" in result.output
    entries = mp_api.get("/api/v1/marketplace/entries").json()["items"]
    assert [e["metadata"]["title"] for e in entries] == ["gold-v1"]
    assert entries[0]["endorser"]["email"] == "jane@example.org"
    assert entries[0]["metadata"]["locations"] == ["https://images.example.org/gold-v1.qcow2"]
    run = mp_api.post("/api/v1/instances", json={"image": entries[0]["identifier"]})
    assert run.status_code == 202, run.text
