"""Identity and multi-tenancy: who is calling and what they may do.

Pure modules (no database, no FastAPI); the services layer wires them to rows and routes:

* :mod:`.principal`: the authenticated caller (roles per project, scopes, cloud admin);
* :mod:`.scopes`: ``compute:read``-style scopes and :func:`require_scope`;
* :mod:`.passwords`: argon2id hashes, the login rate limiter, :func:`authenticate_password`;
* :mod:`.tokens`: ``stl_<id>_<secret>`` API tokens, scoped, expiring, revocable;
* :mod:`.x509` and :mod:`.dn`: client certificates, RFC 3820 proxies, CRLs, DN forms and the
  DN-to-user mapping, certificates forwarded by a trusted front proxy;
* :mod:`.oidc`: JWT bearer tokens checked against the issuer's JWKS, groups -> projects;
* :mod:`.authz`: :func:`authorize`, the one authorization decision (404 vs 403);
* :mod:`.quotas`: limits and the pre-create check; :mod:`.accounting`: usage and APEL.
"""

from __future__ import annotations

from stratuslab.identity.authz import Action, Kind, ReadFilter, Visibility, authorize, read_filter
from stratuslab.identity.principal import AuthMethod, Principal
from stratuslab.identity.scopes import ALL_SCOPES, has_scope, parse_scopes, require_scope

__all__ = [
    "ALL_SCOPES",
    "Action",
    "AuthMethod",
    "Kind",
    "Principal",
    "ReadFilter",
    "Visibility",
    "authorize",
    "has_scope",
    "parse_scopes",
    "read_filter",
    "require_scope",
]
