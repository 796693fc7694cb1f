"""Request dependencies: the services context, who is calling, and what they may do.

:func:`get_principal` authenticates the request (services/auth.py) and then applies the
route's authorization rule (services/access.py) before the route's body runs. The
principal is left in ``request.state.principal`` for the audit log.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.routing import iter_route_contexts

from stratuslab.db.models import Host
from stratuslab.services import access
from stratuslab.services.auth import (
    Authenticator,
    Credentials,
    Principal,
    authenticate,
    authenticate_host,
    utcnow,
)
from stratuslab.services.context import Ctx

PROJECT_HEADER = "X-Stratus-Project"
_build_lock = threading.Lock()


def get_ctx(request: Request) -> Ctx:
    ctx: Ctx = request.app.state.ctx
    return ctx


def authenticator(app: FastAPI, ctx: Ctx) -> Authenticator:
    """The app's :class:`Authenticator`, built on first use from the settings
    (tests may set ``app.state.authenticator`` beforehand)."""
    found = getattr(app.state, "authenticator", None)
    if isinstance(found, Authenticator):
        return found
    with _build_lock:
        found = getattr(app.state, "authenticator", None)
        if not isinstance(found, Authenticator):
            found = Authenticator.from_settings(ctx.settings)
            app.state.authenticator = found
        return found


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        return None
    return value.strip()


def credentials(request: Request, auth: Authenticator) -> Credentials:
    return Credentials(
        bearer=_bearer(request),
        cert_header=request.headers.get(auth.settings.x509_header) if auth.trust else None,
        peer=request.client.host if request.client else None,
        project=request.headers.get(PROJECT_HEADER) or None,
    )


def client_address(request: Request, auth: Authenticator) -> str:
    """The caller's address (behind a trusted proxy: from ``X-Forwarded-For``); kept in
    ``request.state.forwarded_for`` for the audit log when it is not the TCP peer."""
    peer = request.client.host if request.client else None
    address = auth.client_address(peer, request.headers.get("x-forwarded-for"))
    if address and address != peer:
        request.state.forwarded_for = address
    return address


def get_principal(request: Request, ctx: Annotated[Ctx, Depends(get_ctx)]) -> Principal:
    auth = authenticator(request.app, ctx)
    client_address(request, auth)
    with ctx.sessions() as session:
        principal = authenticate(session, auth, credentials(request, auth), now=utcnow())
        request.state.principal = principal
        path = route_path(request)
        if path is not None:
            access.check_route(session, principal, request.method, path, request.path_params)
        return principal


def route_path(request: Request) -> str | None:
    """The full path template of the request's route (``/api/v1/images/{ref}``)."""
    route = request.scope.get("route")
    if route is None:
        return None
    paths: dict[int, str] | None = getattr(request.app.state, "route_paths", None)
    if paths is None:
        paths = {
            id(context.original_route): context.path
            for context in iter_route_contexts(request.app.routes)
            if context.path is not None
        }
        request.app.state.route_paths = paths
    return paths.get(id(route))


def get_host(request: Request, ctx: Annotated[Ctx, Depends(get_ctx)]) -> Host:
    with ctx.sessions() as session:
        host = authenticate_host(session, _bearer(request))
        session.expunge(host)
        return host


CtxDep = Annotated[Ctx, Depends(get_ctx)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
HostDep = Annotated[Host, Depends(get_host)]
