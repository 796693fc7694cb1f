"""Alembic environment: runs on the connection handed in by ``db.session.upgrade``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import stratuslab.marketplace.models  # noqa: F401  (registers the marketplace tables)
from stratuslab.db.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        url = config.get_main_option("sqlalchemy.url") or "sqlite:///stratus-dev.db"
        engine = create_engine(url)
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata)
            context.run_migrations()
        return
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run()
