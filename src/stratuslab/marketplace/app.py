"""A standalone marketplace server: ``stratus-marketplace``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import click
from fastapi import FastAPI

from stratuslab import __version__
from stratuslab.api import problems
from stratuslab.db.session import make_engine, make_session_factory, upgrade
from stratuslab.errors import StratusError
from stratuslab.marketplace import models as _models  # noqa: F401  (tables on Base)
from stratuslab.marketplace.api import router
from stratuslab.marketplace.context import (
    DEFAULT_MAX_UPLOAD,
    DEFAULT_PORT,
    MarketplaceContext,
    MarketplaceSettings,
)
from stratuslab.marketplace.truststore import TrustStore, TrustStoreCache


def build_context(settings: MarketplaceSettings, *, migrate: bool = True) -> MarketplaceContext:
    """Engine, schema, sessions and trust store for ``settings``."""
    if settings.trust_dir is not None:
        TrustStore.load(settings.trust_dir)  # fail at start-up, not at the first upload
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    if migrate:
        upgrade(engine)
    trust = TrustStoreCache(settings.trust_dir) if settings.trust_dir is not None else None
    return MarketplaceContext(
        settings=settings, sessions=make_session_factory(engine), trust_cache=trust
    )


def create_marketplace_app(
    settings: MarketplaceSettings, *, context: MarketplaceContext | None = None
) -> FastAPI:
    mp = context or build_context(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if context is None:
                mp.close()

    app = FastAPI(
        title="StratusLab marketplace",
        version=__version__,
        openapi_url="/marketplace/openapi.json",
        docs_url="/marketplace/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.marketplace = mp
    problems.install(app)
    app.include_router(router)
    return app


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("marketplace-data"))
@click.option("--database-url", default=None, help="default: SQLite in the data directory")
@click.option(
    "--trust-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="CA certificates and CRLs, like /etc/grid-security/certificates",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option("--max-upload-bytes", type=int, default=DEFAULT_MAX_UPLOAD, show_default=True)
@click.option("--require-crls", is_flag=True, help="refuse signers whose CA has no CRL")
def main(
    data_dir: Path,
    database_url: str | None,
    trust_dir: Path | None,
    host: str,
    port: int,
    max_upload_bytes: int,
    require_crls: bool,
) -> None:
    """Run a standalone StratusLab marketplace."""
    import uvicorn

    settings = MarketplaceSettings(
        data_dir=data_dir,
        database_url=database_url,
        trust_dir=trust_dir,
        host=host,
        port=port,
        max_upload_bytes=max_upload_bytes,
        require_crls=require_crls,
    )
    try:
        app = create_marketplace_app(settings)
    except StratusError as exc:
        raise click.ClickException(str(exc)) from exc
    uvicorn.run(app, host=host, port=port)
