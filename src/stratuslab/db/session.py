"""Engines and sessions, built from settings (never at import time)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from stratuslab.errors import InvalidInput, ServiceUnavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgres://")
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    if url.startswith("postgresql"):
        # one pooled connection per API worker thread (40): an overflow connection is closed
        # when it is returned, and the next burst pays a new server process for each one
        engine = create_engine(url, pool_size=40, max_overflow=10)
        _ping_idle_connections(engine)
        return engine
    raise InvalidInput(
        f"unsupported database URL {url!r}",
        hint="use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB",
    )


#: a pooled connection idle longer than this is checked before use (seconds)
PING_AFTER_IDLE = 10.0


def _ping_idle_connections(engine: Engine) -> None:
    """Check a pooled connection before use only when it sat idle for a while (the server
    may have closed it meanwhile). ``pool_pre_ping`` would check every checkout: one more
    round trip per transaction, on every request."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
            dbapi_conn.rollback()
        except Exception as exc:  # the pool drops this connection and takes another
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


def _sqlite_engine(url: str) -> Engine:
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # A file database keeps a connection per API worker thread (40): a connection made for
    # a burst and closed after it costs a connect and the pragmas below every time.
    on_file = url.startswith("sqlite:///") and path not in ("", ":memory:")
    pool: dict[str, Any] = {"pool_size": 40, "max_overflow": 10} if on_file else {}
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # Take the write lock at BEGIN so read-then-write transactions serialise cleanly.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Read-only sessions (:func:`read_session`) begin deferred: in WAL mode they read a
        # snapshot without waiting for, or blocking, the one writer.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


#: execution option marking a connection that only reads (see :func:`read_session`)
READ_ONLY = "stratus_read_only"
_READ_ENGINE = "_stratus_read_engine"


def read_engine(engine: Engine) -> Engine:
    """``engine`` for read-only work, sharing its pool. SQLite: transactions begin deferred
    instead of taking the write lock. PostgreSQL: autocommit, so a read sends no ``BEGIN``
    and no ``ROLLBACK`` (two round trips of a three-query GET); under READ COMMITTED every
    statement read its own snapshot already, so nothing is lost. Made once per engine."""
    found = getattr(engine, _READ_ENGINE, None)
    if not isinstance(found, Engine):
        options: dict[str, Any] = {READ_ONLY: True}
        if engine.dialect.name == "postgresql":
            options["isolation_level"] = "AUTOCOMMIT"
        found = engine.execution_options(**options)
        setattr(engine, _READ_ENGINE, found)
    return found


def read_session(factory: sessionmaker[Session]) -> Session:
    """A session for work that only reads (a GET, a long-poll check, an agent's credential).
    On SQLite it does not queue behind writers for the write lock; on PostgreSQL it runs
    without a transaction. It must not write: on SQLite a write could fail with "database is
    locked" when another writer got there first, on PostgreSQL it would commit at once."""
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine):
        return factory()
    return factory(bind=read_engine(bind))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (Alembic)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = None
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except Exception as exc:  # pragma: no cover - depends on the server
        if "connect" in str(exc).lower():
            raise ServiceUnavailable(
                f"cannot reach the database: {exc}",
                hint="check database_url / STRATUS_DATABASE_URL and that the server runs",
            ) from exc
        raise
