"""Self-registration (with a small SMTP sink on loopback), projects and members, usage and
APEL records from events, the audit log, and instance lifetime limits."""

from __future__ import annotations

import email
import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from stratuslab.config import ControllerSettings
from stratuslab.db.models import Event, Host, Instance, Project, utcnow
from stratuslab.services import lifetime
from stratuslab.services.context import Ctx
from stratuslab.types import Role
from tests.integration.test_authz_matrix import add_host, add_user
from tests.integration.test_identity_quotas import as_, upload

P = "/api/v1"


class SmtpSink:
    """Just enough SMTP to receive mail from smtplib: one connection at a time."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[email.message.Message] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as rfile:
                self._session(conn, rfile)

    def _session(self, conn: socket.socket, rfile) -> None:  # type: ignore[no-untyped-def]
        conn.sendall(b"220 sink ready\r\n")
        while line := rfile.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                data = b""
                while (chunk := rfile.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                self.messages.append(email.message_from_bytes(data))
                conn.sendall(b"250 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 ok\r\n")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


def text(message: email.message.Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    served = SmtpSink()
    yield served
    served.close()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, sink: SmtpSink) -> ControllerSettings:
    return ControllerSettings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        registration=True,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        public_url="https://cloud.example.org",
        argon2_memory_kib=1024,
        argon2_time_cost=1,
        argon2_parallelism=1,
        lifetime_warning=600,
    )


def test_register_verify_approve_login(
    api: TestClient, app_client: TestClient, sink: SmtpSink
) -> None:
    anonymous = TestClient(api.app)
    body = {"username": "newbie", "email": "newbie@example.org", "password": "a long passphrase"}
    resp = anonymous.post(f"{P}/register", json=body)
    assert resp.status_code == 202, resp.text
    assert anonymous.post(f"{P}/register", json=body).status_code == 409  # name taken
    link = re.search(r"https://\S+", text(sink.messages[0]))
    assert link is not None
    assert sink.messages[0]["To"] == "newbie@example.org"
    login = {"username": "newbie", "password": "a long passphrase"}
    assert anonymous.post(f"{P}/auth/tokens", json=login).json()["error"]["code"] == "bad_login"
    url = urlsplit(link.group(0))
    assert anonymous.get(f"{url.path}?{url.query}").status_code == 200
    assert anonymous.get(f"{url.path}?{url.query}").status_code == 404  # used
    pending = api.get(f"{P}/registrations", params={"status": "pending_approval"}).json()
    assert [r["user"] for r in pending] == ["newbie"]
    approved = api.post(f"{P}/registrations/{pending[0]['id']}/approve", json={})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    assert "approved" in text(sink.messages[-1])
    token = anonymous.post(f"{P}/auth/tokens", json=login).json()["token"]
    me = as_(api, token).get(f"{P}/auth/whoami").json()
    assert me["roles"] == {"newbie": "admin"}  # a project of their own


def test_rejection_and_disabled_registration(api: TestClient, sink: SmtpSink, ctx: Ctx) -> None:
    anonymous = TestClient(api.app)
    body = {"username": "spam", "email": "spam@example.org", "password": "a long passphrase"}
    anonymous.post(f"{P}/register", json=body)
    secret = re.search(r"token=(\S+)", text(sink.messages[0]))
    assert secret is not None
    anonymous.get(f"{P}/register/verify", params={"token": secret.group(1)})
    reg = api.get(f"{P}/registrations").json()[0]
    resp = api.post(f"{P}/registrations/{reg['id']}/reject", json={"reason": "no such group"})
    assert resp.json()["status"] == "rejected"
    assert "no such group" in text(sink.messages[-1])
    again = api.post(f"{P}/registrations/{reg['id']}/approve", json={})
    assert again.status_code == 409


def test_projects_and_members(api: TestClient, ctx: Ctx) -> None:
    assert api.post(f"{P}/projects", json={"name": "physics"}).status_code == 201
    paul = as_(api, add_user(ctx, "paul", "physics", Role.ADMIN))
    add_user(ctx, "pete", "chemistry", Role.MEMBER)
    resp = paul.put(f"{P}/projects/physics/members/pete", json={"role": "reader"})
    assert resp.status_code == 200, resp.text
    members = {m["user"]: m["role"] for m in paul.get(f"{P}/projects/physics/members").json()}
    assert members == {"paul": "admin", "pete": "reader"}
    resp = paul.delete(f"{P}/projects/physics/members/paul")
    assert resp.json()["error"]["code"] == "last_admin"
    resp = paul.patch(f"{P}/projects/physics", json={"max_instance_lifetime": 3600})
    assert resp.json()["max_instance_lifetime"] == 3600
    assert [p["name"] for p in paul.get(f"{P}/projects").json()] == ["physics"]
    assert paul.delete(f"{P}/projects/physics/members/pete").status_code == 204
    assert api.delete(f"{P}/projects/chemistry").status_code == 409  # default project of pete


def _event(ctx: Ctx, kind: str, inst: str, host: str, minutes_ago: float) -> None:
    with ctx.uow() as s:
        row = s.get(Instance, inst)
        assert row is not None
        s.add(
            Event(
                kind=kind,
                message=kind,
                instance_id=inst,
                host_id=host,
                project_id=row.project_id,
                time=utcnow() - timedelta(minutes=minutes_ago),
            )
        )


def test_usage_from_events(api: TestClient, ctx: Ctx, tmp_path: Path) -> None:
    olga = as_(api, add_user(ctx, "olga", "physics", Role.MEMBER))
    add_host(ctx)
    upload(olga, tmp_path, "base")
    made = olga.post(f"{P}/instances", json={"image": "base", "flavor": "m1.large"}).json()
    inst = made["instances"][0]["id"]
    with ctx.sessions() as s:
        host = s.query(Host).one().id
    _event(ctx, "instance.running", inst, host, 120)
    _event(ctx, "instance.stopped", inst, host, 60)
    records = olga.get(f"{P}/usage").json()
    assert len(records) == 1
    record = records[0]
    assert (record["vcpus"], record["host"], record["status"]) == (2, "node-1", "suspended")
    assert record["wall_seconds"] == pytest.approx(3600, abs=5)
    assert record["vcpu_hours"] == pytest.approx(2.0, abs=0.01)
    assert record["ram_gb_hours"] == pytest.approx(6.0, abs=0.01)
    csv = olga.get(f"{P}/usage", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("instance_id,")
    assert olga.get(f"{P}/usage", params={"format": "apel"}).status_code == 403
    apel = api.get(f"{P}/usage", params={"format": "apel", "project": "physics"}).text
    assert apel.startswith("APEL-cloud-message: v0.4")
    assert f"VMUUID: {inst}" in apel
    assert "FQAN: physics" in apel
    # another project's member sees nothing of it
    otto = as_(api, add_user(ctx, "otto", "chemistry", Role.MEMBER))
    assert otto.get(f"{P}/usage").json() == []
    assert otto.get(f"{P}/usage", params={"project": "physics"}).status_code == 404


def test_audit_log(api: TestClient, ctx: Ctx) -> None:
    api.post(f"{P}/projects", json={"name": "audited"})
    TestClient(api.app).post(f"{P}/auth/tokens", json={"username": "mallory", "password": "x" * 8})
    api.get(f"{P}/projects")  # reads are not audited
    records = api.get(f"{P}/audit").json()
    created = next(r for r in records if r["path"] == f"{P}/projects")
    assert (created["method"], created["status"], created["actor"]) == ("POST", 201, "admin")
    assert created["credential"].startswith("token:")
    assert created["source"] == "testclient"
    failed = next(r for r in records if r["path"] == f"{P}/auth/tokens")
    assert (failed["status"], failed["actor"], failed["user_id"]) == (401, "mallory", None)
    assert not any(r["method"] == "GET" for r in records)
    olga = as_(api, add_user(ctx, "olga", "physics", Role.MEMBER))
    assert olga.get(f"{P}/audit").status_code == 403


def test_lifetime_limit_warns_then_stops(api: TestClient, ctx: Ctx, tmp_path: Path) -> None:
    olga = as_(api, add_user(ctx, "olga", "physics", Role.MEMBER))
    add_host(ctx)
    upload(olga, tmp_path, "base")
    inst = olga.post(f"{P}/instances", json={"image": "base"}).json()["instances"][0]["id"]
    api.patch(f"{P}/projects/physics", json={"max_instance_lifetime": 3600})
    with ctx.uow() as s:
        row = s.get(Instance, inst)
        assert row is not None
        row.status, row.started_at = "running", utcnow() - timedelta(minutes=55)
    uow = ctx.uow()
    with uow:
        result = lifetime.enforce(uow)
    assert result.warned == [inst]
    uow = ctx.uow()
    with uow:
        assert lifetime.enforce(uow).warned == []  # warned once per run
    uow = ctx.uow()
    with uow:
        result = lifetime.enforce(uow, now=utcnow() + timedelta(minutes=6))
    assert result.stopped == [inst]
    shown = olga.get(f"{P}/instances/{inst}").json()
    assert shown["desired"] == "stopped"
    kinds = [e["kind"] for e in olga.get(f"{P}/events", params={"instance_id": inst}).json()]
    assert "instance.lifetime_warning" in kinds
    assert "instance.lifetime_stop" in kinds
    with ctx.sessions() as s:
        assert s.query(Project).filter_by(name="physics").one().max_instance_lifetime == 3600
