"""Log in and manage API tokens: ``/auth/tokens``, ``/auth/whoami``."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request, Response

from stratuslab.api.deps import (
    CtxDep,
    PrincipalDep,
    authenticator,
    client_address,
    get_principal,
)
from stratuslab.db.models import ApiToken, Project, User, utcnow
from stratuslab.errors import InvalidInput
from stratuslab.identity.passwords import PasswordAccount, PasswordLogin
from stratuslab.schemas.common import ErrorEnvelope
from stratuslab.schemas.identity import Token, TokenCreate, TokenCreated, WhoAmI
from stratuslab.services import tokens
from stratuslab.services.context import Ctx

router = APIRouter(prefix="/auth", tags=["auth"])


def token_out(row: ApiToken, user: str, project: str) -> Token:
    return Token(
        token_id=row.token_id or f"legacy-{row.id[:8]}",
        user_id=row.user_id,
        user=user,
        project_id=row.project_id,
        project=project,
        scopes=None if row.scopes is None else row.scopes.split(),
        description=row.description,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


@router.post(
    "/tokens",
    status_code=201,
    responses={429: {"model": ErrorEnvelope, "description": "Too many failed logins"}},
)
def create_token(body: TokenCreate, request: Request, ctx: CtxDep) -> TokenCreated:
    """Log in with ``username`` and ``password``, or (with credentials) create a token.

    Wrong user names and wrong passwords get the same 401; after repeated failures, 429.
    """
    auth = authenticator(request.app, ctx)
    username, password = body.username, body.password
    checked: PasswordLogin | None = None
    principal = None
    if username is not None or password is not None:
        if not username or password is None:
            raise InvalidInput(
                "give both username and password", hint="`stratus login` asks for both"
            )
        request.state.actor = username
        checked = tokens.verify_login(
            auth,
            username=username,
            password=password,
            address=client_address(request, auth),
            lookup=partial(_account, ctx),
        )
    else:
        principal = get_principal(request, ctx)
    with ctx.uow() as s:
        if checked is not None:
            created = tokens.login_token(
                s,
                auth,
                checked,
                project=body.project,
                scopes=body.scopes,
                expires_in=body.expires_in,
                description=body.description,
            )
        else:
            assert principal is not None
            created = tokens.create(
                s,
                auth,
                principal,
                project=body.project,
                scopes=body.scopes,
                expires_in=body.expires_in,
                description=body.description or "stratus token create",
            )
        user = s.get(User, created.row.user_id)
        project = s.get(Project, created.row.project_id)
        wire = token_out(created.row, user.name if user else "", project.name if project else "")
        return TokenCreated(**wire.model_dump(), token=created.token)


def _account(ctx: Ctx, username: str) -> PasswordAccount | None:
    with ctx.sessions() as s:
        return tokens.account(s, username)


@router.get("/tokens")
def list_tokens(
    ctx: CtxDep, principal: PrincipalDep, user: str | None = None, revoked: bool = False
) -> list[Token]:
    """Your tokens (a cloud admin may ask for another ``user``'s); never their secrets."""
    with ctx.sessions() as s:
        rows = tokens.list_tokens(s, principal, user=user, include_revoked=revoked)
        return [token_out(*row) for row in rows]


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    with ctx.uow() as s:
        tokens.revoke(s, principal, token_id, now=utcnow())
    return Response(status_code=204)


@router.get("/whoami")
def whoami(ctx: CtxDep, principal: PrincipalDep) -> WhoAmI:
    with ctx.sessions() as s:
        user = s.get(User, principal.user_id)
        project = s.get(Project, principal.project_id) if principal.project_id else None
        return WhoAmI(
            user_id=principal.user_id,
            user=user.name if user else "",
            project_id=principal.project_id,
            project=project.name if project else "",
            roles=tokens.describe_roles(s, principal),
            cloud_admin=principal.cloud_admin,
            admin=principal.is_admin,
            scopes=None if principal.scopes is None else sorted(principal.scopes),
            method=principal.method.value,
            credential=principal.credential_id,
        )
