"""Request dependencies: the services context, who is calling, and what they may do.

:func:`get_principal` authenticates the request (services/auth.py) and then applies the
route's authorization rule (services/access.py) before the route's body runs. The
principal is left in ``request.state.principal`` for the audit log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import iter_route_contexts
from sqlalchemy import event
from sqlalchemy.orm import Session

from stratuslab.db.models import Host
from stratuslab.db.session import read_session
from stratuslab.identity.tokens import looks_like_token
from stratuslab.services import access
from stratuslab.services.auth import (
    Authenticator,
    Credentials,
    HostCredentialCache,
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
    creds = credentials(request, auth)
    # An API token only reads; OIDC and certificates may create the user on first use.
    reads_only = creds.bearer is not None and looks_like_token(creds.bearer)
    with read_session(ctx.sessions) if reads_only else ctx.sessions() as session:
        return _principal(request, session, auth, creds)


def _principal(
    request: Request, session: Session, auth: Authenticator, creds: Credentials
) -> Principal:
    principal = authenticate(session, auth, creds, now=utcnow())
    request.state.principal = principal
    path = route_path(request)
    if path is not None:
        access.check_route(session, principal, request.method, path, request.path_params)
    return principal


async def request_reads(ctx: Annotated[Ctx, Depends(get_ctx)]) -> AsyncIterator[Session]:
    """One read-only session for a whole read request: authentication, the route's
    authorization rule and the route's own reads share one transaction, and the resource the
    rule loaded is already in the session when the route asks for it again."""
    session = read_session(ctx.sessions)
    # the identity map holds rows weakly: keep what the request loads until it ends
    loaded: list[object] = []
    event.listen(session, "loaded_as_persistent", lambda _s, obj: loaded.append(obj))
    try:
        yield session
    finally:
        await run_in_threadpool(session.close)


def get_reading_principal(
    request: Request,
    ctx: Annotated[Ctx, Depends(get_ctx)],
    session: Annotated[Session, Depends(request_reads)],
) -> Principal:
    """:func:`get_principal` for routes that only read, in the request's read session."""
    auth = authenticator(request.app, ctx)
    client_address(request, auth)
    creds = credentials(request, auth)
    if creds.bearer is None or not looks_like_token(creds.bearer):
        return get_principal(request, ctx)  # may create a user: a session of its own
    return _principal(request, session, auth, creds)


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


def host_credentials(app: FastAPI) -> HostCredentialCache:
    """The app's cache of checked node credentials (services/auth.py)."""
    found = getattr(app.state, "host_credentials", None)
    if not isinstance(found, HostCredentialCache):
        with _build_lock:
            found = getattr(app.state, "host_credentials", None)
            if not isinstance(found, HostCredentialCache):
                found = HostCredentialCache()
                app.state.host_credentials = found
    return found


def _lookup_host(ctx: Ctx, credential: str | None) -> Host:
    with read_session(ctx.sessions) as session:
        host = authenticate_host(session, credential)
        session.expunge(host)
        return host


async def get_host(request: Request, ctx: Annotated[Ctx, Depends(get_ctx)]) -> Host:
    """The calling node's host (its credential checked; cached for a short while, so an
    agent request that hits the cache costs no database transaction and no thread)."""
    credential = _bearer(request)
    cache = host_credentials(request.app)
    now = time.monotonic()
    if credential:
        host = cache.get(credential, now=now)
        if host is not None:
            return host
    host = await run_in_threadpool(_lookup_host, ctx, credential)
    assert credential is not None
    cache.put(credential, host, now=now)
    return host


CtxDep = Annotated[Ctx, Depends(get_ctx)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
#: the caller of a route that only reads; use with :data:`ReadsDep` for the route's reads
ReadingPrincipalDep = Annotated[Principal, Depends(get_reading_principal)]
ReadsDep = Annotated[Session, Depends(request_reads)]
HostDep = Annotated[Host, Depends(get_host)]
