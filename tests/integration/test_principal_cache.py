"""Checked API tokens are kept for a few seconds (services/principal_cache.py): a hit costs
no identity query, and any identity change committed in this process empties the cache."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from stratuslab.config import ControllerSettings
from stratuslab.db.models import utcnow
from stratuslab.identity.principal import Principal
from stratuslab.identity.tokens import parse_token
from stratuslab.services.context import Ctx
from stratuslab.services.principal_cache import PrincipalCache, identity_changed
from stratuslab.services.principal_cache import generation as gen
from stratuslab.types import Role
from tests.integration.test_authz_matrix import add_user

P = "/api/v1"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> ControllerSettings:
    return ControllerSettings(
        data_dir=tmp_path / "data", database_url=database_url, token_cache_seconds=60
    )


@pytest.fixture
def statements(ctx: Ctx) -> Iterator[list[str]]:
    seen: list[str] = []
    engine = ctx.sessions.kw["bind"]

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _client(api: TestClient, token: str) -> TestClient:
    client = TestClient(api.app)
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def _token_queries(seen: list[str]) -> int:
    return sum("FROM api_tokens" in s for s in seen)


def test_a_checked_token_needs_no_identity_query(
    api: TestClient, ctx: Ctx, statements: list[str]
) -> None:
    bob = _client(api, add_user(ctx, "bob", "physics", Role.MEMBER))
    assert bob.get(f"{P}/auth/whoami").status_code == 200
    assert _token_queries(statements) == 1
    statements.clear()
    assert bob.get(f"{P}/auth/whoami").json()["user"] == "bob"
    assert _token_queries(statements) == 0


def test_revocation_and_membership_changes_apply_at_once(api: TestClient, ctx: Ctx) -> None:
    token = add_user(ctx, "bob", "physics", Role.MEMBER)
    bob = _client(api, token)
    assert bob.get(f"{P}/auth/whoami").status_code == 200  # cached now
    assert bob.delete(f"{P}/auth/tokens/{parse_token(token).token_id}").status_code == 204
    resp = bob.get(f"{P}/auth/whoami")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "token_revoked"

    carol = _client(api, add_user(ctx, "carol", "physics", Role.MEMBER))
    assert carol.get(f"{P}/projects/physics/members").status_code == 200  # cached now
    assert api.delete(f"{P}/projects/physics/members/carol").status_code == 204
    assert carol.get(f"{P}/projects/physics/members").status_code in (403, 404)


def test_a_change_from_another_process_is_seen_within_the_ttl(api: TestClient, ctx: Ctx) -> None:
    token = add_user(ctx, "bob", "physics", Role.MEMBER)
    bob = _client(api, token)
    assert bob.get(f"{P}/auth/whoami").status_code == 200
    api.app.state.authenticator.principals.ttl = 0.5
    # another controller process revokes it: plain SQL, no session of this process
    with ctx.sessions.kw["bind"].begin() as conn:
        conn.execute(
            text("UPDATE api_tokens SET revoked_at = :now WHERE token_id = :id"),
            {"now": utcnow(), "id": parse_token(token).token_id},
        )
    time.sleep(0.6)  # past the cache's ttl
    assert bob.get(f"{P}/auth/whoami").json()["error"]["code"] == "token_revoked"


def test_entries_expire_with_their_token_and_with_identity_changes() -> None:
    cache = PrincipalCache(ttl=60)
    who = Principal(user_id="u", project_id="p")
    now = utcnow()
    db, other = "sqlite:///one.db", "sqlite:///other.db"
    cache.put("t1", None, who, expires=now + timedelta(seconds=5), database=db, since=gen(db))
    assert cache.get("t1", None, now=now) is who
    assert cache.get("t1", "other-project", now=now) is None
    assert cache.get("t1", None, now=now + timedelta(seconds=6)) is None
    identity_changed(other)  # another database: nothing of ``db`` is stale
    assert cache.get("t1", None, now=now) is who
    stale = gen(db)
    identity_changed(db)
    assert cache.get("t1", None, now=now) is None
    cache.put("t2", None, who, expires=None, database=db, since=stale)  # read before the change
    assert cache.get("t2", None, now=now) is None
    assert PrincipalCache(ttl=0).get("t1", None, now=now) is None
