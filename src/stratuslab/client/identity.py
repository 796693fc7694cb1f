"""Identity calls of the REST API: login, tokens, projects, users, quotas, usage, audit.

Wraps a :class:`~stratuslab.client.client.StratusClient` (same transport, token and error
handling)::

    ident = Identity(client)
    created = ident.login("jane", password)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from stratuslab.client.client import StratusClient, _params
from stratuslab.client.http import seg as _seg
from stratuslab.schemas.identity import (
    AuditRecord,
    IdentityLink,
    Member,
    MemberSet,
    Project,
    ProjectCreate,
    ProjectUpdate,
    Quota,
    QuotaSet,
    Registration,
    RegistrationDecision,
    Token,
    TokenCreate,
    TokenCreated,
    UsageRecord,
    User,
    UserCreate,
    UserIdentity,
    UserUpdate,
    WhoAmI,
)

M = TypeVar("M", bound=BaseModel)


class Identity:
    def __init__(self, client: StratusClient) -> None:
        self.client = client

    # -- tokens ----------------------------------------------------------------------------

    def login(
        self,
        username: str,
        password: str,
        *,
        project: str | None = None,
        scopes: list[str] | None = None,
        expires_in: float | None = None,
        description: str = "",
    ) -> TokenCreated:
        body = TokenCreate(
            username=username,
            password=password,
            project=project,
            scopes=scopes,
            expires_in=expires_in,
            description=description,
        )
        return self._post(TokenCreated, "/auth/tokens", body)

    def create_token(
        self,
        *,
        project: str | None = None,
        scopes: list[str] | None = None,
        expires_in: float | None = None,
        description: str = "",
    ) -> TokenCreated:
        body = TokenCreate(
            project=project, scopes=scopes, expires_in=expires_in, description=description
        )
        return self._post(TokenCreated, "/auth/tokens", body)

    def list_tokens(self, *, user: str | None = None, revoked: bool = False) -> list[Token]:
        params = _params(user=user, revoked="true" if revoked else None)
        return self._list(Token, "/auth/tokens", params)

    def revoke_token(self, token_id: str) -> None:
        self.client._request("DELETE", f"/auth/tokens/{_seg(token_id)}")

    def whoami(self) -> WhoAmI:
        return self._get(WhoAmI, "/auth/whoami")

    # -- projects --------------------------------------------------------------------------

    def list_projects(self) -> list[Project]:
        return self._list(Project, "/projects")

    def create_project(self, spec: ProjectCreate) -> Project:
        return self._post(Project, "/projects", spec)

    def get_project(self, ref: str) -> Project:
        return self._get(Project, f"/projects/{_seg(ref)}")

    def update_project(self, ref: str, spec: ProjectUpdate) -> Project:
        return self._change(Project, "PATCH", f"/projects/{_seg(ref)}", spec)

    def delete_project(self, ref: str) -> None:
        self.client._request("DELETE", f"/projects/{_seg(ref)}")

    def members(self, ref: str) -> list[Member]:
        return self._list(Member, f"/projects/{_seg(ref)}/members")

    def set_member(self, ref: str, user: str, role: str) -> Member:
        response = self.client._request(
            "PUT",
            f"/projects/{_seg(ref)}/members/{_seg(user)}",
            json=MemberSet.model_validate({"role": role}).model_dump(),
        )
        return self.client._parse(Member, response)

    def remove_member(self, ref: str, user: str) -> None:
        self.client._request("DELETE", f"/projects/{_seg(ref)}/members/{_seg(user)}")

    # -- users -----------------------------------------------------------------------------

    def list_users(self) -> list[User]:
        return self._list(User, "/users")

    def create_user(self, spec: UserCreate) -> User:
        return self._post(User, "/users", spec)

    def get_user(self, ref: str) -> User:
        return self._get(User, f"/users/{_seg(ref)}")

    def update_user(self, ref: str, spec: UserUpdate) -> User:
        return self._change(User, "PATCH", f"/users/{_seg(ref)}", spec)

    def disable_user(self, ref: str) -> None:
        self.client._request("DELETE", f"/users/{_seg(ref)}")

    def identities(self, ref: str) -> list[UserIdentity]:
        return self._list(UserIdentity, f"/users/{_seg(ref)}/identities")

    def link(self, ref: str, kind: str, subject: str) -> UserIdentity:
        body = IdentityLink.model_validate({"kind": kind, "subject": subject})
        return self._post(UserIdentity, f"/users/{_seg(ref)}/identities", body)

    def unlink(self, ref: str, identity_id: str) -> None:
        self.client._request("DELETE", f"/users/{_seg(ref)}/identities/{_seg(identity_id)}")

    def registrations(self, status: str | None = None) -> list[Registration]:
        return self._list(Registration, "/registrations", _params(status=status))

    def decide(self, reg_id: str, approve: bool, decision: RegistrationDecision) -> Registration:
        verb = "approve" if approve else "reject"
        return self._post(Registration, f"/registrations/{_seg(reg_id)}/{verb}", decision)

    # -- quotas, usage, audit --------------------------------------------------------------

    def quota(self, scope: str, ref: str) -> Quota:
        return self._get(Quota, f"/quotas/{scope}s/{_seg(ref)}")

    def set_quota(self, scope: str, ref: str, changes: QuotaSet) -> Quota:
        return self._change(Quota, "PUT", f"/quotas/{scope}s/{_seg(ref)}", changes)

    def usage(
        self,
        *,
        project: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[UsageRecord]:
        return self._list(
            UsageRecord, "/usage", self._period(project=project, start=start, end=end)
        )

    def usage_text(
        self,
        fmt: str,
        *,
        project: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> str:
        """Usage as CSV or an APEL message (``fmt``: csv | apel)."""
        params = self._period(project=project, start=start, end=end)
        params["format"] = fmt
        return self.client._request("GET", "/usage", params=params).text

    def audit(
        self, *, user: str | None = None, after: int = 0, limit: int = 100
    ) -> list[AuditRecord]:
        params = _params(user=user, after=after or None, limit=limit)
        return self._list(AuditRecord, "/audit", params)

    # -- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _period(
        *, project: str | None, start: datetime | None, end: datetime | None
    ) -> dict[str, Any]:
        return _params(
            project=project,
            **{
                "from": start.isoformat() if start else None,
                "to": end.isoformat() if end else None,
            },
        )

    def _get(self, model: type[M], path: str) -> M:
        return self.client._parse(model, self.client._request("GET", path))

    def _list(self, model: type[M], path: str, params: dict[str, Any] | None = None) -> list[M]:
        return self.client._parse_list(model, self.client._request("GET", path, params=params))

    def _change(self, model: type[M], method: str, path: str, changes: BaseModel) -> M:
        """PATCH or PUT the fields set in ``changes``."""
        response = self.client._request(method, path, json=changes.model_dump(exclude_unset=True))
        return self.client._parse(model, response)

    def _post(self, model: type[M], path: str, body: BaseModel) -> M:
        response = self.client._request(
            "POST", path, json=body.model_dump(mode="json", exclude_none=True)
        )
        return self.client._parse(model, response)
