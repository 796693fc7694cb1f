"""API tokens: ``stl_<id>_<secret>``, scoped, expiring, revocable.

* ``stl_`` makes a leaked token recognisable (secret scanners, log filters).
* ``<id>`` (12 characters of ``[a-z0-9]``) is stored in clear, unique and indexed: the
  row is found in O(1) with ``WHERE token_id = :id``.
* ``<secret>`` (32 random bytes, URL-safe base64, 43 characters) is stored only as its
  SHA-256. A slow hash would add nothing: 256 random bits cannot be guessed, and a fast
  hash keeps token authentication well under a millisecond.

The token string exists once, in the :class:`MintedToken` handed to the user; it never
appears in a ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from stratuslab.errors import Forbidden, InvalidInput, Unauthorized
from stratuslab.identity.principal import AuthMethod, Principal
from stratuslab.identity.scopes import has_scope, require_scope
from stratuslab.types import Role

TOKEN_PREFIX = "stl_"
ID_LENGTH = 12
_ID_ALPHABET = string.ascii_lowercase + string.digits
_TOKEN_RE = re.compile(r"stl_([a-z0-9]{12})_([A-Za-z0-9_-]{43})")
_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()


@dataclass(frozen=True)
class MintedToken:
    token_id: str
    secret_hash: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class ParsedToken:
    token_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class TokenRecord:
    """What the database keeps about a token (the ``api_tokens`` row)."""

    token_id: str
    secret_hash: str = field(repr=False)
    user_id: str = ""
    project_id: str = ""
    scopes: frozenset[str] | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    description: str = ""


TokenLookup = Callable[[str], TokenRecord | None]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint() -> MintedToken:
    token_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
    secret = secrets.token_urlsafe(32)
    return MintedToken(token_id, hash_secret(secret), f"{TOKEN_PREFIX}{token_id}_{secret}")


def looks_like_token(value: str) -> bool:
    """A StratusLab API token (as opposed to a JWT or a legacy token)."""
    return value.startswith(TOKEN_PREFIX)


def parse_token(value: str) -> ParsedToken:
    match = _TOKEN_RE.fullmatch(value.strip())
    if match is None:
        raise Unauthorized(
            "the API token is malformed",
            hint="copy the whole token, starting with 'stl_' (`stratus login` stores one)",
            code="malformed_token",
        )
    return ParsedToken(match.group(1), match.group(2))


def _bad_token() -> Unauthorized:
    return Unauthorized(
        "the API token is not valid",
        hint="log in again with `stratus login`, or create a token with `stratus token create`",
        code="invalid_token",
    )


def authenticate_token(value: str, lookup: TokenLookup, *, now: datetime) -> TokenRecord:
    """The row of a presented token, or Unauthorized (unknown, wrong secret, revoked, expired).

    Unknown ids and wrong secrets give the same error and cost the same hash comparison.
    Revocation and expiry are only told to whoever holds the right secret.
    """
    parsed = parse_token(value)
    record = lookup(parsed.token_id)
    expected = record.secret_hash if record is not None else _DUMMY_HASH
    matches = hmac.compare_digest(expected, hash_secret(parsed.secret))
    if record is None or not matches:
        raise _bad_token()
    if record.revoked_at is not None:
        raise Unauthorized(
            f"this API token was revoked at {_utc(record.revoked_at).isoformat()}",
            hint="create a new token with `stratus login`",
            code="token_revoked",
        )
    if record.expires_at is not None and now >= _utc(record.expires_at):
        raise Unauthorized(
            f"this API token expired at {_utc(record.expires_at).isoformat()}",
            hint="create a new token with `stratus login`",
            code="token_expired",
        )
    return record


def _utc(when: datetime) -> datetime:
    """Naive datetimes (SQLite drops the zone) are UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def principal_for(
    record: TokenRecord, *, roles: Mapping[str, Role], cloud_admin: bool
) -> Principal:
    """The principal of an authenticated token, given the user's current project roles."""
    if record.project_id not in roles and not cloud_admin:
        raise Forbidden(
            "this token's project no longer counts you among its members",
            hint="ask a project admin to add you again, or log in to another project",
            code="not_a_member",
        )
    return Principal(
        user_id=record.user_id,
        project_id=record.project_id,
        roles=dict(roles),
        cloud_admin=cloud_admin,
        scopes=record.scopes,
        method=AuthMethod.TOKEN,
        credential_id=f"token:{record.token_id}",
    )


def expiry_for(
    now: datetime, lifetime: timedelta | None, *, max_lifetime: timedelta | None
) -> datetime | None:
    """When a new token expires: ``lifetime`` (default and cap: ``max_lifetime``)."""
    if lifetime is None:
        return None if max_lifetime is None else now + max_lifetime
    if lifetime <= timedelta(0):
        raise InvalidInput(
            "a token lifetime must be positive", hint="e.g. --expires-in 30d", code="bad_lifetime"
        )
    if max_lifetime is not None and lifetime > max_lifetime:
        raise InvalidInput(
            f"a token may live at most {max_lifetime.days} days on this cloud",
            hint="ask for a shorter lifetime",
            code="bad_lifetime",
        )
    return now + lifetime


def check_new_scopes(creator: Principal, requested: frozenset[str] | None) -> None:
    """A credential can only create tokens with no more power than itself."""
    if creator.scopes is None:
        return
    if requested is None:
        raise Forbidden(
            "a scoped credential cannot create an unscoped token",
            hint="pass --scope with the scopes you need",
            code="missing_scope",
        )
    missing = [scope for scope in sorted(requested) if not has_scope(creator.scopes, scope)]
    if missing:
        require_scope(creator, missing[0])
