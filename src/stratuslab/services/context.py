"""What every use case needs: settings, sessions, the change notifier."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from stratuslab.config import ControllerSettings


class Notifier:
    """Wakes long-polling requests (agents watching desired state, clients waiting on
    operations) when something they watch changes. Keys are strings like ``host:<id>``.

    Subscribe *before* reading the database, then wait: a change committed in between still
    wakes the waiter. Within one controller process only; other replicas fall back to the
    bounded wait.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = (
            defaultdict(set)
        )
        #: set while a ``host_watch.watch`` task reads every host's generation and
        #: wakes the waiters of those changed by other processes: a host's long-poll then
        #: need not re-read its own
        self.watching_hosts = False

    @contextmanager
    def subscribe(self, key: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters[key].add(entry)
        try:
            yield event
        finally:
            with self._lock:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[key]

    def notify(self, *keys: str) -> None:
        with self._lock:
            entries = [e for k in keys for e in self._waiters.get(k, ())]
        for loop, event in entries:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


@dataclass
class Ctx:
    settings: ControllerSettings
    sessions: sessionmaker[Session]
    notifier: Notifier = field(default_factory=Notifier)

    @property
    def images_dir(self) -> Path:
        return self.settings.data_dir / "images"

    @property
    def console_dir(self) -> Path:
        return self.settings.data_dir / "console"

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self)

    def close(self) -> None:
        """Close every pooled database connection."""
        bind = self.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()


class UnitOfWork:
    """One transaction; notifications are sent only after it commits."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self._keys: set[str] = set()
        self.session: Session = ctx.sessions()

    def notify(self, *keys: str) -> None:
        self._keys.update(keys)

    def __enter__(self) -> Session:
        return self.session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        keys = self._keys | self.session.info.pop(NOTIFY, set())
        try:
            if exc_type is None:
                self.session.commit()
            else:
                self.session.rollback()
        finally:
            self.session.close()
        if exc_type is None and keys:
            self.ctx.notifier.notify(*keys)


#: ``session.info`` key of the notifications asked for by code that has only the session
NOTIFY = "stratus.notify"


def notify_later(session: Session, *keys: str) -> None:
    """Wake the waiters on ``keys`` once the transaction of ``session`` commits (for code
    below a :class:`UnitOfWork` that sees only its session, e.g. agent report handling)."""
    session.info.setdefault(NOTIFY, set()).update(keys)
