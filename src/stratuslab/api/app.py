"""``create_app(settings)``: the one place where the controller is wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.concurrency import run_in_threadpool

from stratuslab import __version__
from stratuslab.api import problems
from stratuslab.api.audit import AuditMiddleware
from stratuslab.api.routes import (
    agent,
    auth,
    events,
    flavors,
    hosts,
    images,
    instances,
    networks,
    nics,
    operations,
    projects,
    quotas,
    register,
    secgroups,
    system,
    usage,
    users,
    volumes,
)
from stratuslab.config import ControllerSettings
from stratuslab.db.session import make_engine, make_session_factory, upgrade
from stratuslab.marketplace import api as marketplace_api
from stratuslab.marketplace.context import MarketplaceContext, MarketplaceSettings
from stratuslab.marketplace.truststore import TrustStoreCache
from stratuslab.schemas.common import ErrorEnvelope
from stratuslab.services import host_watch, lifetime, mobility, quarantine
from stratuslab.services import hosts as host_service
from stratuslab.services import instances as instance_service
from stratuslab.services.context import Ctx

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"
#: every route answers errors in the one shape (api/problems.py)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": text}
    for status, text in (
        (400, "Malformed request"),
        (401, "Missing or invalid credentials"),
        (403, "Not allowed"),
        (404, "Unknown resource"),
        (409, "Conflict with the current state, or no capacity"),
        (422, "Invalid input: the message names the field"),
    )
}


def build_ctx(settings: ControllerSettings, *, migrate: bool = True) -> Ctx:
    engine = make_engine(settings.effective_database_url)
    if migrate:
        upgrade(engine)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Ctx(settings=settings, sessions=make_session_factory(engine))


def marketplace_context(ctx: Ctx) -> MarketplaceContext:
    """The marketplace served inside the controller, on the controller's database."""
    trust = Path(ctx.settings.trust_dir) if ctx.settings.trust_dir else None
    settings = MarketplaceSettings(data_dir=ctx.settings.data_dir, trust_dir=trust)
    return MarketplaceContext(
        settings=settings,
        sessions=ctx.sessions,
        trust_cache=TrustStoreCache(trust) if trust is not None else None,
    )


def housekeeping(ctx: Ctx) -> None:
    """One pass of the controller's background work."""
    uow = ctx.uow()
    with uow as s:
        instance_service.place_pending(uow)
        host_service.mark_offline(s, ctx.settings.heartbeat_grace)
        mobility.advance(uow)
        lifetime.enforce(uow)
        quarantine.expire(uow, ctx.settings.volume_quarantine)


async def _loop(ctx: Ctx, interval: float) -> None:
    while True:
        try:
            await run_in_threadpool(housekeeping, ctx)
        except Exception:  # keep the loop alive; the next pass retries
            log.exception("housekeeping failed")
        await asyncio.sleep(interval)


def create_app(
    settings: ControllerSettings, *, ctx: Ctx | None = None, background: bool = True
) -> FastAPI:
    ctx = ctx or build_ctx(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [_loop(ctx, 2.0), host_watch.watch(ctx)] if background else []
        running = [asyncio.create_task(t) for t in tasks]
        try:
            yield
        finally:
            for task in running:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="StratusLab controller",
        version=__version__,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.marketplace = marketplace_context(ctx)
    problems.install(app)
    app.add_middleware(AuditMiddleware, ctx=ctx)
    api = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)
    for module in (system, flavors, images, instances, operations, hosts, events, agent):
        api.include_router(module.router)
    for module in (auth, projects, users, quotas, usage, register):
        api.include_router(module.router)
    api.include_router(volumes.router)
    for module in (networks, nics, secgroups):
        api.include_router(module.router)
    api.include_router(marketplace_api.router)
    app.include_router(api)
    return app
