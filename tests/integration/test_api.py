"""The REST API through its real services and database (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import make_qcow2


def upload(api: TestClient, path: Path, name: str) -> dict:
    with path.open("rb") as fh:
        resp = api.post("/api/v1/images", params={"name": name}, content=fh.read())
    assert resp.status_code == 201, resp.text
    return resp.json()


def error(resp) -> dict:  # type: ignore[no-untyped-def]
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["message"]
    return body["error"]


def test_health_and_openapi(app_client: TestClient) -> None:
    assert app_client.get("/api/v1/health").json()["status"] == "ok"
    spec = app_client.get("/api/v1/openapi.json").json()
    assert "/api/v1/instances" in spec["paths"]


def test_requests_without_token_are_refused(app_client: TestClient) -> None:
    resp = app_client.get("/api/v1/instances")
    assert resp.status_code == 401
    assert "Bearer" in error(resp)["hint"]


def test_builtin_flavors_match_the_original(api: TestClient) -> None:
    flavors = {f["name"]: f for f in api.get("/api/v1/flavors").json()}
    assert (flavors["m1.small"]["vcpus"], flavors["m1.small"]["memory_mib"]) == (1, 1536)
    assert flavors["m1.small"]["is_default"]
    assert (flavors["c1.xlarge"]["vcpus"], flavors["c1.xlarge"]["memory_mib"]) == (4, 6144)
    assert len([f for f in flavors.values() if f["builtin"]]) == 7


def test_admin_defines_flavor_and_duplicate_is_refused(api: TestClient) -> None:
    body = {"name": "tiny.test", "vcpus": 1, "memory_mib": 128}
    assert api.post("/api/v1/flavors", json=body).status_code == 201
    resp = api.post("/api/v1/flavors", json=body)
    assert resp.status_code == 409
    assert "already exists" in error(resp)["message"]


def test_member_cannot_define_flavors(app_client: TestClient, member_token: str) -> None:
    app_client.headers["Authorization"] = f"Bearer {member_token}"
    resp = app_client.post("/api/v1/flavors", json={"name": "x", "vcpus": 1, "memory_mib": 128})
    assert resp.status_code == 403


def test_image_upload_records_checksum_and_format(api: TestClient, qcow2_file: Path) -> None:
    import hashlib

    image = upload(api, qcow2_file, "base")
    assert image["format"] == "qcow2"
    assert image["sha256"] == hashlib.sha256(qcow2_file.read_bytes()).hexdigest()
    assert image["virtual_size_bytes"] == 64 * 2**20
    assert api.get("/api/v1/images/base").json()["id"] == image["id"]
    assert api.get(f"/api/v1/images/{image['id']}/file").content == qcow2_file.read_bytes()


def test_image_that_is_not_a_disk_is_refused_and_nothing_stored(
    api: TestClient, tmp_path: Path, settings
) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a disk image\n" * 100)
    resp = api.post("/api/v1/images", params={"name": "junk"}, content=junk.read_bytes())
    assert resp.status_code == 422
    assert error(resp)["code"] == "not_a_disk_image"
    assert api.get("/api/v1/images").json() == []
    assert list((settings.data_dir / "images").iterdir()) == []


def test_duplicate_image_name_is_refused(api: TestClient, tmp_path: Path) -> None:
    upload(api, make_qcow2(tmp_path / "a.qcow2"), "dup")
    resp = api.post("/api/v1/images", params={"name": "dup"}, content=b"x")
    assert resp.status_code == 409
    assert error(resp)["code"] == "duplicate_name"


def test_malformed_json_gets_a_clear_error(api: TestClient) -> None:
    resp = api.post(
        "/api/v1/instances", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert error(resp)["code"] == "malformed_json"


def test_invalid_field_is_named(api: TestClient) -> None:
    resp = api.post("/api/v1/instances", json={"image": "x", "count": 0})
    assert resp.status_code == 422
    assert "count" in error(resp)["message"]


def test_unknown_ids_give_404_with_hint(api: TestClient) -> None:
    for path in (
        "/api/v1/instances/nope",
        "/api/v1/images/nope",
        "/api/v1/operations/nope",
        "/api/v1/hosts/nope",
    ):
        resp = api.get(path)
        assert resp.status_code == 404, path
        assert error(resp)["hint"]


def test_unknown_image_and_flavor_are_named(api: TestClient, qcow2_file: Path) -> None:
    resp = api.post("/api/v1/instances", json={"image": "missing"})
    assert resp.status_code == 404
    assert "missing" in error(resp)["message"]
    upload(api, qcow2_file, "base")
    resp = api.post("/api/v1/instances", json={"image": "base", "flavor": "huge.9"})
    assert resp.status_code == 404
    assert "m1.small" in error(resp)["hint"]


def test_no_hosts_means_a_clear_capacity_error_and_no_row(
    api: TestClient, qcow2_file: Path
) -> None:
    upload(api, qcow2_file, "base")
    resp = api.post("/api/v1/instances", json={"image": "base"})
    assert resp.status_code == 409
    assert error(resp)["code"] == "no_hosts"
    assert api.get("/api/v1/instances").json()["total"] == 0


def test_bad_ssh_key_is_refused(api: TestClient, qcow2_file: Path) -> None:
    upload(api, qcow2_file, "base")
    resp = api.post(
        "/api/v1/instances",
        json={"image": "base", "ssh_keys": ["-----BEGIN OPENSSH PRIVATE KEY-----"]},
    )
    assert resp.status_code == 422
    assert error(resp)["code"] == "invalid_ssh_key"


def test_unknown_route_uses_the_error_shape(api: TestClient) -> None:
    resp = api.get("/api/v1/nothing-here")
    assert resp.status_code == 404
    assert error(resp)["code"] == "not_found"


def test_controller_serves_the_marketplace_read_only_without_a_trust_store(
    api: TestClient,
) -> None:
    resp = api.get("/api/v1/marketplace/entries")
    assert resp.status_code == 200
    assert resp.json()["total"] == 0
    upload = api.post("/api/v1/marketplace/entries", json={"metadata": "", "signature": ""})
    assert upload.status_code == 503
    assert "no trust store" in error(upload)["message"]
