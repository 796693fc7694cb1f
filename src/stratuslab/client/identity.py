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

from stratuslab.client.client import StratusClient, _params, _seg
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
        return self.client._parse_list(
            Token, self.client._request("GET", "/auth/tokens", params=params)
        )

    def revoke_token(self, token_id: str) -> None:
        self.client._request("DELETE", f"/auth/tokens/{_seg(token_id)}")

    def whoami(self) -> WhoAmI:
        return self.client._parse(WhoAmI, self.client._request("GET", "/auth/whoami"))

    # -- projects --------------------------------------------------------------------------

    def list_projects(self) -> list[Project]:
        return self.client._parse_list(Project, self.client._request("GET", "/projects"))

    def create_project(self, spec: ProjectCreate) -> Project:
        return self._post(Project, "/projects", spec)

    def get_project(self, ref: str) -> Project:
        return self.client._parse(Project, self.client._request("GET", f"/projects/{_seg(ref)}"))

    def update_project(self, ref: str, spec: ProjectUpdate) -> Project:
        response = self.client._request(
            "PATCH", f"/projects/{_seg(ref)}", json=spec.model_dump(exclude_unset=True)
        )
        return self.client._parse(Project, response)

    def delete_project(self, ref: str) -> None:
        self.client._request("DELETE", f"/projects/{_seg(ref)}")

    def members(self, ref: str) -> list[Member]:
        response = self.client._request("GET", f"/projects/{_seg(ref)}/members")
        return self.client._parse_list(Member, response)

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
        return self.client._parse_list(User, self.client._request("GET", "/users"))

    def create_user(self, spec: UserCreate) -> User:
        return self._post(User, "/users", spec)

    def get_user(self, ref: str) -> User:
        return self.client._parse(User, self.client._request("GET", f"/users/{_seg(ref)}"))

    def update_user(self, ref: str, spec: UserUpdate) -> User:
        response = self.client._request(
            "PATCH", f"/users/{_seg(ref)}", json=spec.model_dump(exclude_unset=True)
        )
        return self.client._parse(User, response)

    def disable_user(self, ref: str) -> None:
        self.client._request("DELETE", f"/users/{_seg(ref)}")

    def identities(self, ref: str) -> list[UserIdentity]:
        response = self.client._request("GET", f"/users/{_seg(ref)}/identities")
        return self.client._parse_list(UserIdentity, response)

    def link(self, ref: str, kind: str, subject: str) -> UserIdentity:
        body = IdentityLink.model_validate({"kind": kind, "subject": subject})
        return self._post(UserIdentity, f"/users/{_seg(ref)}/identities", body)

    def unlink(self, ref: str, identity_id: str) -> None:
        self.client._request("DELETE", f"/users/{_seg(ref)}/identities/{_seg(identity_id)}")

    def registrations(self, status: str | None = None) -> list[Registration]:
        response = self.client._request("GET", "/registrations", params=_params(status=status))
        return self.client._parse_list(Registration, response)

    def decide(self, reg_id: str, approve: bool, decision: RegistrationDecision) -> Registration:
        verb = "approve" if approve else "reject"
        return self._post(Registration, f"/registrations/{_seg(reg_id)}/{verb}", decision)

    # -- quotas, usage, audit --------------------------------------------------------------

    def quota(self, scope: str, ref: str) -> Quota:
        response = self.client._request("GET", f"/quotas/{scope}s/{_seg(ref)}")
        return self.client._parse(Quota, response)

    def set_quota(self, scope: str, ref: str, changes: QuotaSet) -> Quota:
        response = self.client._request(
            "PUT", f"/quotas/{scope}s/{_seg(ref)}", json=changes.model_dump(exclude_unset=True)
        )
        return self.client._parse(Quota, response)

    def usage(
        self,
        *,
        project: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[UsageRecord]:
        response = self.client._request(
            "GET", "/usage", params=self._period(project=project, start=start, end=end)
        )
        return self.client._parse_list(UsageRecord, response)

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
        return self.client._parse_list(
            AuditRecord, self.client._request("GET", "/audit", params=params)
        )

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

    def _post(self, model: type[M], path: str, body: BaseModel) -> M:
        response = self.client._request(
            "POST", path, json=body.model_dump(mode="json", exclude_none=True)
        )
        return self.client._parse(model, response)
