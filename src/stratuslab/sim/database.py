"""The simulation's database: a fresh SQLite file, or a fresh database on a PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


def _plain(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url.removeprefix(prefix)
    return url


def is_postgres(url: str) -> bool:
    return _plain(url).startswith("postgresql://")


@contextmanager
def fresh_database(server_url: str | None, data_dir: Path, *, keep: bool = False) -> Iterator[str]:
    """A URL to an empty database: SQLite in ``data_dir`` when ``server_url`` is None, else a
    new database on that PostgreSQL server (dropped afterwards unless ``keep``)."""
    if not server_url:
        yield f"sqlite:///{data_dir / 'controller.db'}"
        return
    if not is_postgres(server_url):
        yield server_url
        return
    admin = _plain(server_url)
    name = f"stratus_sim_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        if not keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_size(url: str) -> int:
    """Bytes on disk: the SQLite file with its WAL, or ``pg_database_size``."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    with psycopg.connect(_plain(url)) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0
