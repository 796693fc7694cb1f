"""Who is calling, once authenticated: the one value every authorization decision reads.

A :class:`Principal` is built by exactly one authenticator (password, API token, X.509
certificate or OIDC bearer token) and then only read. It carries the user's role in every
project they belong to, the project the request acts in, whether the user is a cloud
administrator, and the scopes of the credential (``None``: not restricted by scope).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from stratuslab.errors import Forbidden
from stratuslab.identity.scopes import ADMIN_SCOPE, has_scope
from stratuslab.types import Role


class AuthMethod(StrEnum):
    PASSWORD = "password"
    TOKEN = "token"
    X509 = "x509"
    OIDC = "oidc"


@dataclass(frozen=True)
class Principal:
    user_id: str
    #: the project this request acts in (new resources go there)
    project_id: str
    #: project id -> role, for every project the user belongs to
    roles: Mapping[str, Role] = field(default_factory=dict, hash=False)
    #: a cloud administrator (sees and manages everything) when the scopes allow it
    cloud_admin: bool = False
    #: what the credential may do; ``None`` means "whatever the roles allow"
    scopes: frozenset[str] | None = None
    method: AuthMethod = AuthMethod.TOKEN
    #: token id, certificate DN or ``issuer#subject``: names the credential in the audit log
    credential_id: str = ""

    def role_in(self, project_id: str) -> Role | None:
        return self.roles.get(project_id)

    @property
    def role(self) -> Role | None:
        """The role in the acting project."""
        return self.role_in(self.project_id)

    @property
    def is_admin(self) -> bool:
        """A cloud administrator whose credential carries the ``admin`` scope (or no scopes)."""
        return self.cloud_admin and has_scope(self.scopes, ADMIN_SCOPE)

    def require_admin(self, action: str) -> None:
        if not self.is_admin:
            raise Forbidden(
                f"{action} needs the cloud admin role",
                hint="ask a cloud administrator, or use a token with the 'admin' scope",
            )
