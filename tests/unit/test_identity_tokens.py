from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from stratuslab.errors import Forbidden, InvalidInput, Unauthorized
from stratuslab.identity import Principal, has_scope, parse_scopes, require_scope
from stratuslab.identity.principal import AuthMethod
from stratuslab.identity.tokens import (
    TokenRecord,
    authenticate_token,
    check_new_scopes,
    expiry_for,
    hash_secret,
    looks_like_token,
    mint,
    parse_token,
    principal_for,
)
from stratuslab.types import Role

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def store(*records: TokenRecord) -> dict[str, TokenRecord]:
    return {r.token_id: r for r in records}


def record_for(token: str, **fields: object) -> TokenRecord:
    parsed = parse_token(token)
    return TokenRecord(
        token_id=parsed.token_id,
        secret_hash=hash_secret(parsed.secret),
        user_id="u-1",
        project_id="p-1",
        **fields,  # type: ignore[arg-type]
    )


def test_minted_token_shape_and_hash() -> None:
    minted = mint()
    assert re.fullmatch(r"stl_[a-z0-9]{12}_[A-Za-z0-9_-]{43}", minted.token)
    assert minted.token.startswith(f"stl_{minted.token_id}_")
    secret = minted.token.split("_", 2)[2]
    assert minted.secret_hash == hash_secret(secret)
    assert secret not in minted.secret_hash
    assert minted.token not in repr(minted)
    assert looks_like_token(minted.token)
    assert not looks_like_token("eyJhbGciOiJSUzI1NiJ9.e30.sig")


def test_tokens_are_unique() -> None:
    assert len({mint().token_id for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "bad",
    ["", "stl_", "stl_short_x", "xyz_abcdefghijkl_" + "a" * 43, "stl_ABCDEFGHIJKL_" + "a" * 43],
)
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(Unauthorized) as err:
        parse_token(bad)
    assert err.value.code == "malformed_token"


def test_authenticate_good_token() -> None:
    minted = mint()
    rows = store(record_for(minted.token, scopes=frozenset({"compute:read"})))
    record = authenticate_token(minted.token, rows.get, now=NOW)
    assert record.scopes == frozenset({"compute:read"})


def test_wrong_secret_and_unknown_id_give_the_same_error() -> None:
    minted = mint()
    rows = store(record_for(minted.token))
    wrong_secret = minted.token[:-4] + ("AAAA" if not minted.token.endswith("AAAA") else "BBBB")
    unknown = mint().token
    errors = []
    for token in (wrong_secret, unknown):
        with pytest.raises(Unauthorized) as err:
            authenticate_token(token, rows.get, now=NOW)
        errors.append((err.value.code, err.value.message))
    assert errors[0] == errors[1] == ("invalid_token", "the API token is not valid")


def test_expired_and_revoked_tokens() -> None:
    minted = mint()
    expired = store(record_for(minted.token, expires_at=NOW))
    with pytest.raises(Unauthorized) as err:
        authenticate_token(minted.token, expired.get, now=NOW)
    assert err.value.code == "token_expired"
    assert "2026-03-01T12:00:00+00:00" in err.value.message
    revoked = store(record_for(minted.token, revoked_at=NOW - timedelta(hours=1)))
    with pytest.raises(Unauthorized) as err:
        authenticate_token(minted.token, revoked.get, now=NOW)
    assert err.value.code == "token_revoked"
    fine = store(record_for(minted.token, expires_at=NOW + timedelta(seconds=1)))
    authenticate_token(minted.token, fine.get, now=NOW)


def test_principal_for_a_token() -> None:
    minted = mint()
    record = record_for(minted.token, scopes=frozenset({"compute:write"}))
    principal = principal_for(record, roles={"p-1": Role.MEMBER}, cloud_admin=False)
    assert principal.project_id == "p-1"
    assert principal.role is Role.MEMBER
    assert principal.method is AuthMethod.TOKEN
    assert principal.credential_id == f"token:{minted.token_id}"
    with pytest.raises(Forbidden) as err:
        principal_for(record, roles={"p-2": Role.ADMIN}, cloud_admin=False)
    assert err.value.code == "not_a_member"
    assert principal_for(record, roles={}, cloud_admin=True).project_id == "p-1"


def test_expiry() -> None:
    assert expiry_for(NOW, None, max_lifetime=None) is None
    assert expiry_for(NOW, None, max_lifetime=timedelta(days=90)) == NOW + timedelta(days=90)
    assert expiry_for(NOW, timedelta(days=1), max_lifetime=timedelta(days=90)) == NOW + timedelta(
        days=1
    )
    with pytest.raises(InvalidInput, match="at most 90 days"):
        expiry_for(NOW, timedelta(days=91), max_lifetime=timedelta(days=90))
    with pytest.raises(InvalidInput, match="positive"):
        expiry_for(NOW, timedelta(0), max_lifetime=None)


def test_scopes_parse_and_imply() -> None:
    assert parse_scopes("compute:read, images:write admin") == {
        "compute:read",
        "images:write",
        "admin",
    }
    with pytest.raises(InvalidInput, match="compute:delete"):
        parse_scopes(["compute:delete"])
    assert has_scope(None, "compute:write")
    assert has_scope(frozenset({"compute:write"}), "compute:read")
    assert not has_scope(frozenset({"compute:read"}), "compute:write")
    assert not has_scope(frozenset({"images:write"}), "compute:read")
    assert has_scope(frozenset({"admin"}), "volumes:write")


def test_require_scope_names_what_is_missing() -> None:
    principal = Principal("u", "p", scopes=frozenset({"compute:read"}))
    require_scope(principal, "compute:read")
    with pytest.raises(Forbidden) as err:
        require_scope(principal, "images:write")
    assert (
        err.value.message == "this credential lacks the scope 'images:write' (it has: compute:read)"
    )
    assert err.value.details == {"required_scope": "images:write"}


def test_new_tokens_cannot_exceed_their_creator() -> None:
    unscoped = Principal("u", "p")
    check_new_scopes(unscoped, None)
    check_new_scopes(unscoped, frozenset({"admin"}))
    scoped = Principal("u", "p", scopes=frozenset({"compute:write"}))
    check_new_scopes(scoped, frozenset({"compute:read"}))
    with pytest.raises(Forbidden, match="images:read"):
        check_new_scopes(scoped, frozenset({"compute:read", "images:read"}))
    with pytest.raises(Forbidden, match="unscoped"):
        check_new_scopes(scoped, None)


def test_admin_scope_controls_cloud_admin_powers() -> None:
    assert Principal("u", "p", cloud_admin=True).is_admin
    assert Principal("u", "p", cloud_admin=True, scopes=frozenset({"admin"})).is_admin
    limited = Principal("u", "p", cloud_admin=True, scopes=frozenset({"compute:write"}))
    assert not limited.is_admin
    with pytest.raises(Forbidden, match="creating a flavor needs the cloud admin role"):
        limited.require_admin("creating a flavor")


def test_naive_datetimes_from_sqlite_are_utc() -> None:
    minted = mint()
    naive = NOW.replace(tzinfo=None)
    rows = store(record_for(minted.token, expires_at=naive))
    with pytest.raises(Unauthorized, match=r"expired at 2026-03-01T12:00:00\+00:00"):
        authenticate_token(minted.token, rows.get, now=NOW)
