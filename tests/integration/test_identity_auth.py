"""Password login and API tokens through the API: no user enumeration, rate limits,
scopes, expiry, revocation, legacy tokens, inactive accounts."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from stratuslab.config import ControllerSettings
from stratuslab.db.models import ApiToken, User, utcnow
from stratuslab.identity.tokens import parse_token
from stratuslab.services.context import Ctx
from stratuslab.types import Role
from tests.integration.test_authz_matrix import add_user

P = "/api/v1"
PASSWORD = "correct horse battery"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> ControllerSettings:
    """Cheap argon2 (tests only) and a small failure budget."""
    return ControllerSettings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        argon2_memory_kib=1024,
        argon2_time_cost=1,
        argon2_parallelism=1,
        login_failures_per_user=3,
        login_failures_per_address=6,
    )


@pytest.fixture
def olga(api: TestClient, ctx: Ctx) -> TestClient:
    add_user(ctx, "olga", "physics", Role.MEMBER)
    resp = api.patch(f"{P}/users/olga", json={"password": PASSWORD})
    assert resp.status_code == 200, resp.text
    assert resp.json()["has_password"]
    return TestClient(api.app)


def login(client: TestClient, username: str, password: str, **extra: object) -> object:
    return client.post(
        f"{P}/auth/tokens", json={"username": username, "password": password, **extra}
    )


def test_password_login_gives_an_expiring_token(olga: TestClient) -> None:
    resp = login(olga, "olga", PASSWORD)
    assert resp.status_code == 201, resp.text  # type: ignore[attr-defined]
    body = resp.json()  # type: ignore[attr-defined]
    assert body["token"].startswith("stl_")
    assert body["project"] == "physics"
    lifetime = body["expires_at"]
    assert lifetime is not None
    olga.headers["Authorization"] = f"Bearer {body['token']}"
    me = olga.get(f"{P}/auth/whoami").json()
    assert (me["user"], me["project"], me["roles"], me["method"]) == (
        "olga",
        "physics",
        {"physics": "member"},
        "token",
    )


def test_wrong_password_and_unknown_user_look_the_same(olga: TestClient) -> None:
    wrong = login(olga, "olga", "not the password")
    unknown = login(olga, "nobody", "not the password")
    for resp in (wrong, unknown):
        assert resp.status_code == 401  # type: ignore[attr-defined]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")  # type: ignore[attr-defined]
    assert wrong.json() == unknown.json()  # type: ignore[attr-defined]
    assert wrong.json()["error"]["code"] == "bad_login"  # type: ignore[attr-defined]
    assert PASSWORD not in wrong.text  # type: ignore[attr-defined]


def test_repeated_failures_are_rate_limited(olga: TestClient) -> None:
    for _ in range(3):
        assert login(olga, "olga", "wrong guess").status_code == 401  # type: ignore[attr-defined]
    blocked = login(olga, "olga", PASSWORD)  # even the right password waits now
    assert blocked.status_code == 429  # type: ignore[attr-defined]
    assert int(blocked.headers["Retry-After"]) > 0  # type: ignore[attr-defined]
    assert blocked.json()["error"]["code"] == "rate_limited"  # type: ignore[attr-defined]
    # unknown user names count against the address as well
    for i in range(3):
        login(olga, f"ghost{i}", "x" * 8)
    assert login(olga, "someone", "whatever").status_code == 429  # type: ignore[attr-defined]


def test_scoped_tokens_list_and_revoke(olga: TestClient) -> None:
    token = login(olga, "olga", PASSWORD).json()["token"]  # type: ignore[attr-defined]
    olga.headers["Authorization"] = f"Bearer {token}"
    created = olga.post(
        f"{P}/auth/tokens", json={"scopes": ["compute:read"], "description": "monitoring"}
    )
    assert created.status_code == 201, created.text
    ro = created.json()
    assert ro["scopes"] == ["compute:read"]
    listed = {t["token_id"]: t for t in olga.get(f"{P}/auth/tokens").json()}
    assert ro["token_id"] in listed
    assert all("token" not in t for t in listed.values())
    # a scoped token cannot mint a more powerful one
    reader = TestClient(olga.app)
    reader.headers["Authorization"] = f"Bearer {ro['token']}"
    resp = reader.post(f"{P}/auth/tokens", json={})
    assert resp.status_code == 403
    resp = reader.post(f"{P}/auth/tokens", json={"scopes": ["compute:write"]})
    assert resp.json()["error"]["code"] == "missing_scope"
    # revoked: refused, and said so (only to the holder of the secret)
    assert olga.delete(f"{P}/auth/tokens/{ro['token_id']}").status_code == 204
    resp = reader.get(f"{P}/auth/whoami")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "token_revoked"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="stratuslab", error="invalid_token"'
    forged = ro["token"][:-2] + ("AA" if not ro["token"].endswith("AA") else "BB")
    reader.headers["Authorization"] = f"Bearer {forged}"
    assert reader.get(f"{P}/auth/whoami").json()["error"]["code"] == "invalid_token"
    # another user's token is "not found"
    assert olga.delete(f"{P}/auth/tokens/{parse_token(token).token_id}x").status_code == 404


def test_expired_token(olga: TestClient, ctx: Ctx) -> None:
    token = login(olga, "olga", PASSWORD, expires_in=60).json()["token"]  # type: ignore[attr-defined]
    with ctx.uow() as s:
        s.execute(
            update(ApiToken)
            .where(ApiToken.token_id == parse_token(token).token_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    olga.headers["Authorization"] = f"Bearer {token}"
    resp = olga.get(f"{P}/auth/whoami")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "token_expired"


def test_malformed_and_missing_credentials(app_client: TestClient) -> None:
    resp = app_client.get(f"{P}/instances")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="stratuslab"'
    app_client.headers["Authorization"] = "Bearer stl_short"
    assert app_client.get(f"{P}/instances").json()["error"]["code"] == "malformed_token"


def test_tokens_from_before_identity_still_work(ctx: Ctx, app_client: TestClient) -> None:
    legacy = "an-old-style-token-made-before-migration-0004"
    with ctx.uow() as s:
        from stratuslab.services import auth

        user, project = auth.ensure_admin(s)
        s.add(
            ApiToken(
                user_id=user.id,
                project_id=project.id,
                token_hash=hashlib.sha256(legacy.encode()).hexdigest(),
            )
        )
    app_client.headers["Authorization"] = f"Bearer {legacy}"
    me = app_client.get(f"{P}/auth/whoami").json()
    assert me["user"] == "admin"
    assert me["admin"]


def test_disabled_accounts_are_refused(api: TestClient, olga: TestClient, ctx: Ctx) -> None:
    token = login(olga, "olga", PASSWORD).json()["token"]  # type: ignore[attr-defined]
    assert api.delete(f"{P}/users/olga").status_code == 204
    olga.headers["Authorization"] = f"Bearer {token}"
    assert olga.get(f"{P}/auth/whoami").json()["error"]["code"] == "token_revoked"
    olga.headers.pop("Authorization")
    assert login(olga, "olga", "wrong").json()["error"]["code"] == "bad_login"  # type: ignore[attr-defined]
    resp = login(olga, "olga", PASSWORD)
    assert resp.json()["error"]["code"] == "account_inactive"  # type: ignore[attr-defined]
    with ctx.sessions() as s:
        assert s.query(User).filter_by(name="olga").one().status == "disabled"


def test_changing_your_own_password_needs_the_current_one(olga: TestClient) -> None:
    token = login(olga, "olga", PASSWORD).json()["token"]  # type: ignore[attr-defined]
    olga.headers["Authorization"] = f"Bearer {token}"
    resp = olga.patch(f"{P}/users/me", json={"password": "a new passphrase"})
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "bad_current_password"
    resp = olga.patch(f"{P}/users/me", json={"password": "olga", "current_password": PASSWORD})
    assert resp.json()["error"]["code"] == "weak_password"
    resp = olga.patch(
        f"{P}/users/me", json={"password": "a new passphrase", "current_password": PASSWORD}
    )
    assert resp.status_code == 200, resp.text
    olga.headers.pop("Authorization")
    assert login(olga, "olga", "a new passphrase").status_code == 201  # type: ignore[attr-defined]


def test_a_token_is_bound_to_its_project(olga: TestClient, ctx: Ctx) -> None:
    add_user(ctx, "olga", "chemistry", Role.READER)
    body = login(olga, "olga", PASSWORD, project="chemistry").json()  # type: ignore[attr-defined]
    assert body["project"] == "chemistry"
    olga.headers["Authorization"] = f"Bearer {body['token']}"
    olga.headers["X-Stratus-Project"] = "physics"
    resp = olga.get(f"{P}/auth/whoami")
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "token_project"
    olga.headers.pop("X-Stratus-Project")
    assert login(olga, "olga", PASSWORD, project="nowhere").status_code == 404  # type: ignore[attr-defined]
