"""Who is calling: users (API tokens, passwords, X.509 certificates, OIDC) and node agents.

The pure checks live in :mod:`stratuslab.identity`; this module feeds them rows. Every
user-facing route goes through :func:`authenticate` (via ``api/deps.py``), node agents
through :func:`authenticate_host`. The result is an :class:`~stratuslab.identity.Principal`
carrying the user's role in each of their projects; ``services/access.py`` decides what it
may do.

Credentials, in the order they are looked at:

1. ``Authorization: Bearer stl_<id>_<secret>``: an API token (always enabled);
2. ``Authorization: Bearer <JWT>``: an OIDC access token (``auth_methods`` has ``oidc``);
3. ``Authorization: Bearer <other>``: a token made before identity (migration 0004);
4. the client-certificate header of a trusted TLS front proxy (``x509``).

Passwords are not accepted per request: ``POST /auth/tokens`` trades them for a token.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratuslab.config import ControllerSettings
from stratuslab.db.models import ApiToken, Project, ProjectMember, User, UserIdentity
from stratuslab.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from stratuslab.identity import dn as dn_mod
from stratuslab.identity import oidc, tokens, x509
from stratuslab.identity.passwords import Argon2Params, LoginRateLimiter, Passwords, RateLimits
from stratuslab.identity.principal import AuthMethod, Principal
from stratuslab.identity.scopes import SERVICES, parse_scopes
from stratuslab.marketplace.truststore import TrustStoreCache
from stratuslab.services import principal_cache
from stratuslab.services.node_credentials import (
    HostCredentialCache,
    authenticate_host,
    hash_secret,
    unknown_host,
)
from stratuslab.services.principal_cache import PrincipalCache
from stratuslab.types import Role

__all__ = [
    "Authenticator",
    "Credentials",
    "HostCredentialCache",
    "Principal",
    "authenticate",
    "authenticate_host",
    "ensure_admin",
    "hash_secret",
    "issue_token",
    "new_secret",
    "roles_of",
    "unknown_host",
]

log = logging.getLogger(__name__)
METHODS = ("password", "x509", "oidc")
ACTIVE = "active"
#: the scopes of a limited grid proxy: it may look, not act
READ_ONLY = frozenset(f"{service}:read" for service in SERVICES)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def no_credentials() -> Unauthorized:
    return Unauthorized(
        "no valid credentials were given",
        hint="pass a token with `Authorization: Bearer TOKEN` (`stratus login` stores one; "
        "`stratus up` saves one for the local cloud in ~/.config/stratuslab/config.toml)",
        code="no_credentials",
    )


# -- the per-controller authentication state --------------------------------------------


@dataclass
class Authenticator:
    """What authentication keeps between requests: password hasher and rate limiter, OIDC
    keys, the certificate trust store and the grid-mapfile. One per controller process."""

    settings: ControllerSettings
    passwords: Passwords
    limiter: LoginRateLimiter
    methods: frozenset[str]
    oidc_verifier: oidc.OidcVerifier | None = None
    trust: TrustStoreCache | None = None
    proxies: tuple[x509.Network, ...] = ()
    #: API-token principals checked recently (services/principal_cache.py)
    principals: PrincipalCache = field(default_factory=PrincipalCache)
    _dn_map: tuple[float, dn_mod.DnMap] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_settings(
        cls, settings: ControllerSettings, *, fetch: oidc.Fetch | None = None
    ) -> Authenticator:
        methods = parse_methods(settings.auth_methods)
        params = Argon2Params(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        limits = RateLimits(
            per_user=settings.login_failures_per_user,
            per_address=settings.login_failures_per_address,
            window=settings.login_failure_window,
        )
        auth = cls(
            settings=settings,
            passwords=Passwords(params),
            limiter=LoginRateLimiter(limits),
            methods=methods,
            proxies=x509.parse_trusted_proxies(_split(settings.trusted_proxies)),
            principals=PrincipalCache(settings.token_cache_seconds),
        )
        if "oidc" in methods:
            issuers = oidc.load_issuers(Path(settings.oidc_issuers_file))
            fetcher = fetch or oidc.httpx_fetcher(httpx.Client(timeout=10.0))
            auth.oidc_verifier = oidc.OidcVerifier(issuers, oidc.JwksCache(fetcher))
        if "x509" in methods:
            trust_dir = settings.x509_trust_dir or settings.trust_dir
            if not trust_dir:
                raise InvalidInput(
                    "x509 authentication needs a CA directory",
                    hint="set x509_trust_dir (or trust_dir) to a grid-security style directory",
                )
            auth.trust = TrustStoreCache(Path(trust_dir))
        return auth

    def is_trusted_proxy(self, address: str | None) -> bool:
        if not address or not self.proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.proxies)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer, or, when the peer is a trusted proxy, the
        right-most ``X-Forwarded-For`` address that is not one (the left part of that
        header is whatever the client wrote)."""
        if not forwarded_for or not self.is_trusted_proxy(peer):
            return peer or ""
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            if not self.is_trusted_proxy(hop):
                return hop
        return peer or ""

    def dn_map(self) -> dn_mod.DnMap | None:
        """The grid-mapfile, re-read when it changes; None when there is none."""
        if not self.settings.grid_mapfile:
            return None
        path = Path(self.settings.grid_mapfile)
        try:
            stamp = path.stat().st_mtime
        except OSError:
            return None
        with self._lock:
            if self._dn_map is None or self._dn_map[0] != stamp:
                self._dn_map = (stamp, dn_mod.parse_dn_map(path.read_text(), source=str(path)))
            return self._dn_map[1]


def parse_methods(text: str) -> frozenset[str]:
    methods = frozenset(m.lower() for m in _split(text)) - {"token"}
    unknown = sorted(methods - set(METHODS))
    if unknown:
        raise InvalidInput(
            f"unknown authentication method(s) in auth_methods: {', '.join(unknown)}",
            hint=f"use a comma-separated list of: {', '.join(METHODS)} (tokens are always on)",
        )
    return methods


def _split(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


# -- request credentials ----------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What a request presented (secrets are kept out of ``repr``)."""

    bearer: str | None = field(default=None, repr=False)
    cert_header: str | None = field(default=None, repr=False)
    #: the TCP peer address (the front proxy when there is one)
    peer: str | None = None
    #: ``X-Stratus-Project``: the project to act in (name or id)
    project: str | None = None


def authenticate(
    session: Session, auth: Authenticator, creds: Credentials, *, now: datetime
) -> Principal:
    """The principal of a request, or Unauthorized saying what failed (never a secret)."""
    if creds.bearer:
        if tokens.looks_like_token(creds.bearer):
            return _by_cached_token(session, auth, creds.bearer, creds.project, now=now)
        if creds.bearer.count(".") == 2 and auth.oidc_verifier is not None:
            principal = _by_oidc(session, auth.oidc_verifier, creds.bearer, now=now)
        else:
            principal = _by_legacy_token(session, creds.bearer, now=now)
    elif creds.cert_header and auth.trust is not None:
        principal = _by_certificate(session, auth, creds, now=now)
    else:
        raise no_credentials()
    return _acting_in(session, principal, creds.project)


def roles_of(session: Session, user_id: str) -> dict[str, Role]:
    rows = session.execute(
        select(ProjectMember.project_id, ProjectMember.role).where(ProjectMember.user_id == user_id)
    )
    return {project_id: Role(role) for project_id, role in rows}


def _by_cached_token(
    session: Session, auth: Authenticator, token: str, project: str | None, *, now: datetime
) -> Principal:
    """An API token's principal acting in ``project``: from the cache, or looked up."""
    found = auth.principals.get(token, project, now=now)
    if found is not None:
        return found
    database = principal_cache.database_of(session)
    since = principal_cache.generation(database)
    principal, expires = _by_api_token(session, token, now=now)
    principal = _acting_in(session, principal, project)
    auth.principals.put(token, project, principal, expires=expires, database=database, since=since)
    return principal


def _by_api_token(
    session: Session, value: str, *, now: datetime
) -> tuple[Principal, datetime | None]:
    """The token's principal (in the token's project) and when the token expires."""
    users: dict[str, tuple[User, dict[str, Role]]] = {}

    def lookup(token_id: str) -> tokens.TokenRecord | None:
        # the token, its user and the user's project roles in one round trip
        rows = session.execute(
            select(ApiToken, User, ProjectMember.project_id, ProjectMember.role)
            .join(User, User.id == ApiToken.user_id)
            .outerjoin(ProjectMember, ProjectMember.user_id == User.id)
            .where(ApiToken.token_id == token_id)
        ).all()
        if not rows:
            return None
        token, user = rows[0][0], rows[0][1]
        roles = {project_id: Role(role) for _t, _u, project_id, role in rows if project_id}
        users[token_id] = (user, roles)
        return _record(token)

    record = tokens.authenticate_token(value, lookup, now=now)
    user, roles = users[record.token_id]
    _check_active(user)
    principal = tokens.principal_for(record, roles=roles, cloud_admin=user.cloud_admin)
    return principal, record.expires_at


def _record(token: ApiToken) -> tokens.TokenRecord:
    return tokens.TokenRecord(
        token_id=token.token_id or "",
        secret_hash=token.token_hash,
        user_id=token.user_id,
        project_id=token.project_id,
        scopes=None if token.scopes is None else parse_scopes(token.scopes),
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        description=token.description,
    )


def _by_legacy_token(session: Session, value: str, *, now: datetime) -> Principal:
    """A token made before migration 0004 (the whole token hashed, no id): unscoped."""
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == hash_secret(value), ApiToken.token_id.is_(None))
    ).first()
    if row is None:
        raise Unauthorized(
            "the bearer token is not valid",
            hint="log in again with `stratus login`, or create a token with `stratus token create`",
            code="invalid_token",
        )
    token, user = row
    if token.revoked_at is not None or (token.expires_at is not None and now >= token.expires_at):
        raise Unauthorized(
            "this API token was revoked or has expired",
            hint="create a new token with `stratus login`",
            code="token_expired",
        )
    _check_active(user)
    record = _record(token)
    principal = tokens.principal_for(
        record, roles=roles_of(session, user.id), cloud_admin=user.cloud_admin
    )
    return _replace(principal, credential_id=f"token:legacy-{token.id[:8]}")


def _check_active(user: User) -> None:
    if user.status != ACTIVE:
        raise Unauthorized(
            "this account is not active",
            hint="a new registration must be confirmed by e-mail and approved by an admin; "
            "otherwise ask the cloud administrators",
            code="account_inactive",
        )


def _by_oidc(
    session: Session, verifier: oidc.OidcVerifier, token: str, *, now: datetime
) -> Principal:
    identity = verifier.verify(token, now=now)
    mapped: dict[str, Role] = {}
    if identity.project_roles:
        by_name = dict(
            session.execute(
                select(Project.name, Project.id).where(
                    Project.name.in_(list(identity.project_roles))
                )
            ).all()
        )
        mapped = {
            by_name[name]: role for name, role in identity.project_roles.items() if name in by_name
        }
    user = _user_for_oidc(session, identity, mapped)
    _check_active(user)
    roles = roles_of(session, user.id)
    for project_id, role in mapped.items():
        if _rank(role) > _rank(roles.get(project_id)):
            roles[project_id] = role
    if not roles and not user.cloud_admin:
        raise _no_project()
    return Principal(
        user_id=user.id,
        project_id="",
        roles=roles,
        cloud_admin=user.cloud_admin,
        scopes=identity.scopes,
        method=AuthMethod.OIDC,
        credential_id=identity.credential_id,
    )


def _no_project() -> Forbidden:
    return Forbidden(
        "your token's groups give you no project on this cloud",
        hint="ask the cloud administrators to map one of your groups to a project",
        code="no_project",
    )


def _rank(role: Role | None) -> int:
    return {None: -1, Role.READER: 0, Role.MEMBER: 1, Role.ADMIN: 2}[role]


def _linked_user(session: Session, kind: str, subject: str) -> User | None:
    return session.scalar(
        select(User)
        .join(UserIdentity, UserIdentity.user_id == User.id)
        .where(UserIdentity.kind == kind, UserIdentity.subject == subject)
    )


def _user_for_oidc(
    session: Session, identity: oidc.OidcIdentity, mapped: Mapping[str, Role]
) -> User:
    """The user an OIDC identity is linked to; created on first use when its groups give it
    a project (just-in-time provisioning)."""
    subject = identity.credential_id
    user = _linked_user(session, "oidc", subject)
    if user is not None:
        return user
    if not mapped:
        raise _no_project()
    name = _free_name(session, identity.username or identity.subject)
    user = User(name=name, role=Role.MEMBER.value, default_project_id=sorted(mapped)[0])
    session.add(user)
    try:
        session.flush()
        session.add(UserIdentity(user_id=user.id, kind="oidc", subject=subject))
        session.commit()
    except IntegrityError:  # a concurrent first request made it
        session.rollback()
        found = _linked_user(session, "oidc", subject)
        if found is None:
            raise
        return found
    log.info("created user %s for OIDC identity %s", name, subject)
    return user


def _free_name(session: Session, wanted: str) -> str:
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in wanted)[:48] or "user"
    name, n = base, 1
    while session.scalar(select(User.id).where(User.name == name)) is not None:
        n += 1
        name = f"{base}-{n}"
    return name


def _by_certificate(
    session: Session, auth: Authenticator, creds: Credentials, *, now: datetime
) -> Principal:
    assert auth.trust is not None
    presented = x509.certs_from_proxy_header(
        creds.cert_header, peer=creds.peer, trusted_proxies=auth.proxies
    )
    if not presented:
        raise no_credentials()
    ident = x509.verify_client_chain(
        presented, auth.trust.get(), at=now, require_crls=auth.settings.x509_require_crls
    )
    user = _user_for_dn(session, auth, ident.dn)
    _check_active(user)
    return Principal(
        user_id=user.id,
        project_id="",
        roles=roles_of(session, user.id),
        cloud_admin=user.cloud_admin,
        scopes=READ_ONLY if ident.limited else None,
        method=AuthMethod.X509,
        credential_id=ident.dn,
    )


def _user_for_dn(session: Session, auth: Authenticator, dn: str) -> User:
    canonical = dn_mod.canonical_dn(dn)
    user = session.scalar(
        select(User)
        .join(UserIdentity, UserIdentity.user_id == User.id)
        .where(UserIdentity.kind == "x509", UserIdentity.subject == canonical)
    )
    if user is not None:
        return user
    mapping = auth.dn_map()
    name = mapping.lookup(dn) if mapping is not None else None
    if name is not None:
        user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise Unauthorized(
            f"the certificate subject {dn} is not mapped to a user of this cloud",
            hint="ask the cloud administrators to link your DN to your account "
            "(`stratus user link USER --dn DN`)",
            code="unmapped_dn",
        )
    return user


def _acting_in(session: Session, principal: Principal, wanted: str | None) -> Principal:
    """Choose the project the request acts in (``X-Stratus-Project``, else the default)."""
    if principal.method is AuthMethod.TOKEN:
        if (
            wanted
            and wanted != principal.project_id
            and _project_id(session, wanted) != (principal.project_id)
        ):
            raise Forbidden(
                "this token is bound to another project",
                hint="create a token for that project (`stratus login --project NAME`)",
                code="token_project",
            )
        return principal
    if wanted:
        project_id = _project_id(session, wanted)
        if project_id is None or (project_id not in principal.roles and not principal.is_admin):
            raise NotFound(
                f"project {wanted!r} does not exist",
                hint="list your projects with `stratus project list`",
                code="project_not_found",
            )
        return _replace(principal, project_id=project_id)
    default = session.scalar(select(User.default_project_id).where(User.id == principal.user_id))
    if default is not None and (default in principal.roles or principal.cloud_admin):
        return _replace(principal, project_id=default)
    if principal.roles:
        names = dict(
            session.execute(
                select(Project.id, Project.name).where(Project.id.in_(list(principal.roles)))
            ).all()
        )
        first = min(principal.roles, key=lambda pid: names.get(pid, pid))
        return _replace(principal, project_id=first)
    return principal


def _project_id(session: Session, ref: str) -> str | None:
    return session.scalar(select(Project.id).where((Project.id == ref) | (Project.name == ref)))


def _replace(
    principal: Principal, *, project_id: str | None = None, credential_id: str | None = None
) -> Principal:
    return replace(
        principal,
        project_id=principal.project_id if project_id is None else project_id,
        credential_id=principal.credential_id if credential_id is None else credential_id,
    )


# -- bootstrap --------------------------------------------------------------------------


def ensure_admin(session: Session) -> tuple[User, Project]:
    """The first cloud administrator (user ``admin``) and its project (created once)."""
    from stratuslab.services import quotas

    user = session.scalar(select(User).where(User.name == "admin"))
    if user is not None:
        project = session.get(Project, user.default_project_id)
        assert project is not None
        return user, project
    project = Project(name="admin", description="the cloud administrators' project")
    session.add(project)
    session.flush()
    user = User(
        name="admin", role=Role.ADMIN.value, default_project_id=project.id, cloud_admin=True
    )
    session.add(user)
    session.flush()
    session.add(ProjectMember(project_id=project.id, user_id=user.id, role=Role.ADMIN.value))
    quotas.create_row(session, "project", project.id, limits={})
    session.flush()
    return user, project


def issue_token(
    session: Session,
    user: User,
    project: Project,
    description: str,
    *,
    scopes: frozenset[str] | None = None,
    expires_at: datetime | None = None,
    via: str = "",
) -> str:
    """Store a new ``stl_`` token for ``user`` in ``project``; return the token string."""
    minted = tokens.mint()
    session.add(
        ApiToken(
            user_id=user.id,
            project_id=project.id,
            token_id=minted.token_id,
            token_hash=minted.secret_hash,
            description=description,
            scopes=None if scopes is None else " ".join(sorted(scopes)),
            expires_at=expires_at,
            created_via=via,
        )
    )
    session.flush()
    return minted.token


def utcnow() -> datetime:
    return datetime.now(UTC)


def expiry(seconds: float | None, *, default: float, cap: float) -> datetime | None:
    """When a new token expires; ``seconds`` None: ``default`` (0 = never, capped by ``cap``)."""
    lifetime = (
        timedelta(seconds=seconds)
        if seconds is not None
        else (timedelta(seconds=default) if default > 0 else None)
    )
    return tokens.expiry_for(
        utcnow(), lifetime, max_lifetime=timedelta(seconds=cap) if cap > 0 else None
    )
