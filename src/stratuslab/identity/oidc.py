"""OIDC bearer tokens: JWTs verified against the issuer's JWKS, then mapped to projects.

Verification order (the first failure is reported as :class:`Unauthorized` naming the
reason, never echoing the token):

1. shape: three base64url parts, JSON objects without duplicate keys, at most 16 KiB;
2. algorithm: ``RS256`` or ``ES256`` only. ``none`` and the HMAC family are refused by
   name (an ``HS256`` token "signed" with the issuer's public key is the classic attack),
   and so is any ``crit`` header;
3. issuer: the (not yet trusted) ``iss`` must be one of the configured issuers, whose
   configuration then decides everything else;
4. key: the header's ``kid`` in the issuer's JWKS (fetched and cached with a TTL; an unknown
   ``kid`` triggers one early refresh, rate-limited, for key rotation); the key type must
   match the algorithm (RSA >= 2048 bits for RS256, P-256 for ES256);
5. signature;
6. claims: ``aud`` contains an accepted audience, ``exp`` present and not passed, ``nbf`` and
   ``iat`` not in the future (all with a small leeway), optional maximum lifetime, ``sub``.

Then groups (``wlcg.groups``, ``eduperson_entitlement``, ``groups``; exact matches only:
in the WLCG profile a child group does not imply its parent) map to project roles, and
the ``scope`` claim (WLCG ``compute.*`` or StratusLab scopes) restricts what the token may
do. Scopes never add power: they only narrow what the roles allow.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stratuslab.errors import InvalidInput, ServiceUnavailable, StratusError, Unauthorized
from stratuslab.identity.scopes import ALL_SCOPES
from stratuslab.types import Role

ALGORITHMS = ("RS256", "ES256")
MAX_TOKEN_LENGTH = 16 * 1024
DEFAULT_GROUP_CLAIMS = ("wlcg.groups", "eduperson_entitlement", "groups")
#: WLCG Common JWT Profile compute capabilities -> StratusLab scopes
WLCG_SCOPES = {
    "compute.read": "compute:read",
    "compute.create": "compute:write",
    "compute.modify": "compute:write",
    "compute.cancel": "compute:write",
}
_ROLE_RANK = {Role.READER: 0, Role.MEMBER: 1, Role.ADMIN: 2}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HINT = "get a fresh access token from your identity provider for this cloud"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
Fetch = Callable[[str], Mapping[str, Any]]


def _refuse(message: str, code: str) -> Unauthorized:
    return Unauthorized(message, hint=_HINT, code=code)


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRule:
    project: str  # project name
    role: Role


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    audiences: tuple[str, ...]
    #: empty: found by OIDC discovery (``<issuer>/.well-known/openid-configuration``)
    jwks_uri: str = ""
    group_claims: tuple[str, ...] = DEFAULT_GROUP_CLAIMS
    #: group (exactly as in the token) -> project and role
    groups: Mapping[str, GroupRule] = field(default_factory=dict, hash=False)
    #: project and role for tokens none of whose groups is mapped (e.g. one VO per issuer)
    default: GroupRule | None = None
    #: refuse tokens that carry no scope this cloud understands
    require_scope: bool = False
    leeway: float = 60.0
    #: refuse tokens meant to live longer than this many seconds (``exp - iat``)
    max_lifetime: float | None = None


def load_issuers(path: Path) -> list[IssuerConfig]:
    """The ``[[oidc.issuers]]`` tables of a TOML file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(
            f"cannot read the OIDC issuers file {path}: {exc}",
            hint="set oidc_issuers_file to a TOML file with [[oidc.issuers]] tables",
        ) from None
    tables = data.get("oidc", {}).get("issuers", [])
    if not tables:
        raise InvalidInput(f"{path} defines no [[oidc.issuers]]", hint="see docs/identity.md")
    return [issuer_from_config(table) for table in tables]


def issuer_from_config(data: Mapping[str, Any]) -> IssuerConfig:
    """An issuer from its settings table (TOML/YAML); InvalidInput naming the bad key."""
    issuer = _text(data, "issuer")
    _check_url(issuer, "issuer")
    audience = data.get("audience", data.get("audiences"))
    audiences = (audience,) if isinstance(audience, str) else tuple(audience or ())
    if not audiences or not all(isinstance(a, str) and a for a in audiences):
        raise _config_error(issuer, "audience", "give the audience string(s) tokens must carry")
    jwks_uri = str(data.get("jwks_uri", ""))
    if jwks_uri:
        _check_url(jwks_uri, "jwks_uri")
    groups = {
        str(g): _rule(issuer, f"groups.{g}", r) for g, r in dict(data.get("groups", {})).items()
    }
    default = data.get("default")
    return IssuerConfig(
        issuer=issuer,
        audiences=audiences,
        jwks_uri=jwks_uri,
        group_claims=tuple(data.get("group_claims", DEFAULT_GROUP_CLAIMS)),
        groups=groups,
        default=None if default is None else _rule(issuer, "default", default),
        require_scope=bool(data.get("require_scope", False)),
        leeway=float(data.get("leeway", 60.0)),
        max_lifetime=None if data.get("max_lifetime") is None else float(data["max_lifetime"]),
    )


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _config_error("?", key, "a non-empty string is required")
    return value


def _check_url(url: str, key: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return
    raise _config_error(url, key, "use an https:// URL (plain http only on loopback, for tests)")


def _rule(issuer: str, key: str, value: Any) -> GroupRule:
    if not isinstance(value, Mapping) or not isinstance(value.get("project"), str):
        raise _config_error(issuer, key, 'write {project = "name", role = "member"}')
    try:
        role = Role(value.get("role", "member"))
    except ValueError:
        raise _config_error(issuer, key, "role is admin, member or reader") from None
    return GroupRule(value["project"], role)


def _config_error(issuer: str, key: str, hint: str) -> InvalidInput:
    return InvalidInput(
        f"OIDC issuer {issuer}: bad or missing {key!r}", hint=hint, code="bad_oidc_config"
    )


# -- keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jwk:
    kid: str
    key: PublicKey
    alg: str | None = None


def parse_jwks(document: Mapping[str, Any]) -> dict[str, Jwk]:
    """Signature keys of a JWKS document by ``kid``; unusable keys are skipped."""
    keys: dict[str, Jwk] = {}
    for entry in document.get("keys", []) if isinstance(document, Mapping) else []:
        if not isinstance(entry, Mapping) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = _public_key(entry)
        except (ValueError, TypeError, KeyError, binascii.Error):
            continue
        if key is not None:
            kid = str(entry.get("kid", ""))
            keys[kid] = Jwk(kid, key, entry.get("alg"))
    return keys


def _public_key(entry: Mapping[str, Any]) -> PublicKey | None:
    if entry.get("kty") == "RSA":
        n = int.from_bytes(_b64url(entry["n"]), "big")
        e = int.from_bytes(_b64url(entry["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if entry.get("kty") == "EC" and entry.get("crv") == "P-256":
        x = int.from_bytes(_b64url(entry["x"]), "big")
        y = int.from_bytes(_b64url(entry["y"]), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    return None  # symmetric ("oct") and other keys never verify anything here


class JwksCache:
    """Keys per issuer, fetched with ``fetch(url) -> JSON object`` and kept ``ttl`` seconds.

    A forced refresh (unknown ``kid``) happens at most every ``min_refresh`` seconds. When
    fetching fails, keys up to ``stale_for`` seconds old are still used.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        ttl: float = 300.0,
        min_refresh: float = 30.0,
        stale_for: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.ttl, self.min_refresh, self.stale_for = ttl, min_refresh, stale_for
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, dict[str, Jwk]]] = {}

    def keys(self, config: IssuerConfig, *, refresh: bool = False) -> dict[str, Jwk]:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(config.issuer)
            if entry is not None:
                age = now - entry[0]
                if age < self.ttl and not (refresh and age >= self.min_refresh):
                    return entry[1]
            try:
                keys = parse_jwks(self._fetch(self._jwks_uri(config)))
            except StratusError:
                if entry is not None and now - entry[0] < self.stale_for:
                    return entry[1]
                raise
            self._entries[config.issuer] = (now, keys)
            return keys

    def _jwks_uri(self, config: IssuerConfig) -> str:
        if config.jwks_uri:
            return config.jwks_uri
        discovery = self._fetch(config.issuer.rstrip("/") + "/.well-known/openid-configuration")
        uri = discovery.get("jwks_uri")
        if discovery.get("issuer") != config.issuer or not isinstance(uri, str):
            raise ServiceUnavailable(
                f"the OIDC discovery document of {config.issuer} names another issuer or no "
                "jwks_uri",
                hint="check the issuer URL in the controller settings",
                code="oidc_discovery_failed",
            )
        _check_url(uri, "jwks_uri")
        return uri


def httpx_fetcher(client: httpx.Client, *, max_bytes: int = 1 << 20) -> Fetch:
    """``fetch`` for :class:`JwksCache`: GET a JSON object; ServiceUnavailable on failure."""

    def fetch(url: str) -> Mapping[str, Any]:
        try:
            response = client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > max_bytes:
                raise ValueError("document too large")
            document = response.json()
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except (httpx.HTTPError, ValueError) as exc:
            raise ServiceUnavailable(
                f"cannot fetch {url}: {exc}",
                hint="the identity provider is unreachable; try again later",
                code="oidc_keys_unavailable",
            ) from None
        return document

    return fetch


# -- tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OidcIdentity:
    issuer: str
    subject: str
    groups: tuple[str, ...]
    #: project name -> role, from the issuer's group mapping
    project_roles: Mapping[str, Role]
    #: ``None``: the token carries no scope this cloud knows (roles decide alone)
    scopes: frozenset[str] | None
    expires_at: datetime
    username: str = ""  # preferred_username, else email, else ""
    token_id: str = ""  # jti
    claims: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    @property
    def credential_id(self) -> str:
        return f"{self.issuer}#{self.subject}"


class OidcVerifier:
    def __init__(self, issuers: Iterable[IssuerConfig], keys: JwksCache) -> None:
        self.issuers = {i.issuer: i for i in issuers}
        self._keys = keys

    def verify(self, token: str, *, now: datetime) -> OidcIdentity:
        header, claims, signing_input, signature = split_jwt(token)
        alg = check_header(header)
        config = self.issuers.get(str(claims.get("iss")))
        if config is None:
            raise _refuse(
                f"the token's issuer {str(claims.get('iss'))[:200]!r} is not trusted by this cloud",
                "jwt_issuer",
            )
        key = self._key(config, header, alg)
        verify_signature(key, alg, signing_input, signature)
        check_claims(claims, config, now=now)
        return identity_from_claims(claims, config)

    def _key(self, config: IssuerConfig, header: Mapping[str, Any], alg: str) -> Jwk:
        kid = header.get("kid", "")
        if not isinstance(kid, str):
            raise _refuse("the token's key id (kid) is not a string", "invalid_jwt")
        keys = self._keys.keys(config)
        if kid not in keys:
            keys = self._keys.keys(config, refresh=True)
        if kid not in keys:
            raise _refuse(
                f"unknown key id {kid[:100]!r} for issuer {config.issuer}", "jwt_unknown_key"
            )
        jwk = keys[kid]
        if jwk.alg is not None and jwk.alg != alg:
            raise _refuse(f"key {kid!r} is for {jwk.alg}, the token says {alg}", "jwt_alg")
        return jwk


def _b64url(segment: str) -> bytes:
    if not isinstance(segment, str) or not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _json_object(data: bytes) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ValueError("duplicate key")
        return result

    value = json.loads(data, object_pairs_hook=no_duplicates)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims (not yet trusted), signing input and signature of a compact JWS."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise _refuse(f"the token is longer than {MAX_TOKEN_LENGTH} bytes", "invalid_jwt")
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three parts")
        header = _json_object(_b64url(parts[0]))
        claims = _json_object(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise _refuse(
            "the bearer token is not a well-formed JWT (three base64url JSON parts)",
            "invalid_jwt",
        ) from None
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def check_header(header: Mapping[str, Any]) -> str:
    """The algorithm, if acceptable."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise _refuse("unsigned tokens (alg 'none') are not accepted", "jwt_alg")
    if alg.upper().startswith("HS"):
        raise _refuse(
            f"{alg} tokens (shared-secret HMAC) are not accepted: the issuer must sign with "
            "RS256 or ES256",
            "jwt_alg",
        )
    if alg not in ALGORITHMS:
        raise _refuse(
            f"JWT algorithm {alg[:20]!r} is not accepted (RS256 or ES256 only)", "jwt_alg"
        )
    if "crit" in header:
        raise _refuse(
            "the token has critical header extensions this cloud does not know", "jwt_alg"
        )
    return alg


def verify_signature(jwk: Jwk, alg: str, signing_input: bytes, signature: bytes) -> None:
    key = jwk.key
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            return
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, ec.SECP256R1) or len(signature) != 64:
                raise InvalidSignature
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            return
    except InvalidSignature:
        raise _refuse(
            "the token signature does not verify (tampered, or signed with another key)",
            "jwt_bad_signature",
        ) from None
    raise _refuse(f"key {jwk.kid!r} cannot verify {alg} signatures", "jwt_alg")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"the token's {name!r} claim is not a number", "jwt_claims")
    return float(value)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def check_claims(claims: Mapping[str, Any], config: IssuerConfig, *, now: datetime) -> None:
    t = now.timestamp()
    exp, nbf, iat = (_number(claims, n) for n in ("exp", "nbf", "iat"))
    if exp is None:
        raise _refuse("the token has no expiry (exp)", "jwt_claims")
    if t > exp + config.leeway:
        raise _refuse(f"the token expired at {_when(exp)}", "jwt_expired")
    if nbf is not None and t + config.leeway < nbf:
        raise _refuse(f"the token is not valid before {_when(nbf)}", "jwt_not_yet_valid")
    if iat is not None and t + config.leeway < iat:
        raise _refuse(f"the token was issued in the future ({_when(iat)})", "jwt_not_yet_valid")
    start = iat if iat is not None else nbf
    if config.max_lifetime is not None and start is not None and exp - start > config.max_lifetime:
        raise _refuse(
            f"the token lives {int(exp - start)} s; this cloud accepts at most "
            f"{int(config.max_lifetime)} s",
            "jwt_lifetime",
        )
    _check_audience(claims.get("aud"), config)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise _refuse("the token has no subject (sub)", "jwt_claims")


def _check_audience(aud: Any, config: IssuerConfig) -> None:
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not audiences:
        raise _refuse("the token names no audience (aud)", "jwt_audience")
    if not any(isinstance(a, str) and a in config.audiences for a in audiences):
        shown = ", ".join(repr(str(a)[:100]) for a in audiences[:5])
        raise _refuse(
            f"wrong audience: the token is for {shown}; this cloud accepts "
            f"{', '.join(repr(a) for a in config.audiences)}",
            "jwt_audience",
        )


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def groups_of(claims: Mapping[str, Any], claim_names: Iterable[str]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for name in claim_names:
        for group in _strings(claims.get(name)):
            found.setdefault(group, None)
    return tuple(found)


def map_groups(groups: Iterable[str], config: IssuerConfig) -> dict[str, Role]:
    """Project name -> the highest role any of ``groups`` gives there."""
    roles: dict[str, Role] = {}
    for group in groups:
        rule = config.groups.get(group)
        if rule is None:
            continue
        current = roles.get(rule.project)
        if current is None or _ROLE_RANK[rule.role] > _ROLE_RANK[current]:
            roles[rule.project] = rule.role
    if not roles and config.default is not None:
        roles[config.default.project] = config.default.role
    return roles


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The StratusLab scopes a token's ``scope`` (or ``scp``) claim carries."""
    raw = claims.get("scope")
    names = raw.split() if isinstance(raw, str) else _strings(claims.get("scp"))
    mapped = {WLCG_SCOPES.get(name, name) for name in names}
    return frozenset(mapped & ALL_SCOPES)


def identity_from_claims(claims: Mapping[str, Any], config: IssuerConfig) -> OidcIdentity:
    scopes = scopes_of(claims)
    if not scopes and config.require_scope:
        raise _refuse("the token carries no scope for this cloud (e.g. compute.read)", "jwt_scope")
    groups = groups_of(claims, config.group_claims)
    username = claims.get("preferred_username") or claims.get("email") or ""
    return OidcIdentity(
        issuer=config.issuer,
        subject=str(claims["sub"]),
        groups=groups,
        project_roles=map_groups(groups, config),
        scopes=scopes or None,
        expires_at=datetime.fromtimestamp(float(claims["exp"]), UTC),
        username=str(username),
        token_id=str(claims.get("jti", "")),
        claims=dict(claims),
    )
