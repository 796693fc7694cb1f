"""Token authentication against a real SQLite table, the way the API will do it
(the code path ``bench/auth.py`` times)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bench.auth import authenticate_via_db, build_token_db, tokens
from sqlalchemy import update

from stratuslab.errors import Unauthorized
from stratuslab.identity.tokens import parse_token
from stratuslab.types import Role

NOW = datetime.now(UTC)


def test_lookup_by_id_then_secret(tmp_path: Path) -> None:
    engine, issued = build_token_db(tmp_path / "t.db", 200)
    try:
        admin = authenticate_via_db(engine, issued[0], now=NOW)
        assert admin.is_admin and admin.scopes is None
        member = authenticate_via_db(engine, issued[7], now=NOW)
        assert (member.user_id, member.project_id, member.role) == ("u-7", "p-7", Role.MEMBER)
        assert member.scopes == {"compute:write", "images:read"}
        assert not member.is_admin

        forged = issued[7][:-1] + ("A" if issued[7][-1] != "A" else "B")
        with pytest.raises(Unauthorized, match="not valid"):
            authenticate_via_db(engine, forged, now=NOW)

        token_id = parse_token(issued[8]).token_id
        with engine.begin() as conn:
            conn.execute(update(tokens).where(tokens.c.token_id == token_id).values(revoked_at=NOW))
        with pytest.raises(Unauthorized, match="revoked"):
            authenticate_via_db(engine, issued[8], now=NOW)

        token_id = parse_token(issued[9]).token_id
        with engine.begin() as conn:
            conn.execute(
                update(tokens)
                .where(tokens.c.token_id == token_id)
                .values(expires_at=NOW - timedelta(seconds=1))
            )
        with pytest.raises(Unauthorized, match="expired"):
            authenticate_via_db(engine, issued[9], now=NOW)
    finally:
        engine.dispose()
