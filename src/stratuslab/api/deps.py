"""Request dependencies: the services context and who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from stratuslab.db.models import Host
from stratuslab.services.auth import Principal, authenticate_host, authenticate_user
from stratuslab.services.context import Ctx


def get_ctx(request: Request) -> Ctx:
    ctx: Ctx = request.app.state.ctx
    return ctx


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        return None
    return value.strip()


def get_principal(request: Request, ctx: Annotated[Ctx, Depends(get_ctx)]) -> Principal:
    with ctx.sessions() as session:
        return authenticate_user(session, _bearer(request))


def get_host(request: Request, ctx: Annotated[Ctx, Depends(get_ctx)]) -> Host:
    with ctx.sessions() as session:
        host = authenticate_host(session, _bearer(request))
        session.expunge(host)
        return host


CtxDep = Annotated[Ctx, Depends(get_ctx)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
HostDep = Annotated[Host, Depends(get_host)]
