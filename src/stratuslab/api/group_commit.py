"""Group commit: many small write transactions from node agents as one.

On SQLite one transaction writes at a time (``BEGIN IMMEDIATE``). A few thousand agents
each sending a heartbeat and a report per pass make thousands of tiny write transactions
that queue for the lock, each holding one of the API's worker threads while it waits. Here
the requests queue their work instead (without a thread: the route awaits a future); one
worker runs everything queued in one transaction, each job under its own savepoint (a job
that fails rolls back alone and its caller gets the error), commits once, and answers every
caller. A request is answered only after its work is committed, as before.

Only for SQLite (see :func:`enabled`): on PostgreSQL writers do not serialise, and one
transaction locking the rows of many hosts in request order could deadlock with a
placement that locks them in name order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool

from stratuslab.services.context import Ctx, UnitOfWork

log = logging.getLogger(__name__)
T = TypeVar("T")
#: at most this many jobs per transaction
MAX_BATCH = 256


@dataclass
class _Job:
    work: Callable[[UnitOfWork], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def enabled(ctx: Ctx) -> bool:
    bind = ctx.sessions.kw.get("bind")
    return bind is not None and bind.dialect.name == "sqlite"


_made = threading.Lock()


def of(app: Any, ctx: Ctx) -> GroupCommit:
    """The app's group (made on first use)."""
    group = getattr(app.state, "group_commit", None)
    if not isinstance(group, GroupCommit):
        with _made:
            group = getattr(app.state, "group_commit", None)
            if not isinstance(group, GroupCommit):
                group = GroupCommit(ctx)
                app.state.group_commit = group
    return group


def write(app: Any, ctx: Ctx, work: Callable[[UnitOfWork], T]) -> Awaitable[T]:
    """Run a small write transaction: on SQLite grouped with the others waiting, elsewhere
    on its own (in the threadpool)."""
    if app is None or not enabled(ctx):
        return run_in_threadpool(_alone, ctx, work)
    return of(app, ctx).run(work)


def _alone(ctx: Ctx, work: Callable[[UnitOfWork], T]) -> T:
    uow = ctx.uow()
    with uow:
        return work(uow)


class GroupCommit:
    def __init__(self, ctx: Ctx, *, max_batch: int = MAX_BATCH) -> None:
        self.ctx = ctx
        self.max_batch = max_batch
        self._queue: list[_Job] = []
        self._lock = threading.Lock()
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: transactions committed and jobs run (for tests and the curious)
        self.batches = 0
        self.jobs = 0

    async def run(self, work: Callable[[UnitOfWork], T]) -> T:
        """Run ``work(uow)`` in the next group transaction; return its result once committed
        (or raise its error)."""
        loop = asyncio.get_running_loop()
        job = _Job(work, loop.create_future(), loop)
        with self._lock:
            self._queue.append(job)
            lead = not self._draining
            self._draining = True
        if lead:
            task = loop.create_task(self._drain_in_thread())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        result: T = await job.future
        return result

    async def _drain_in_thread(self) -> None:
        await run_in_threadpool(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                if not batch:
                    self._draining = False
                    return
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a caller waiting
                for job in batch:
                    _answer(job, None, exc)
                if not isinstance(exc, Exception):
                    with self._lock:
                        self._draining = False
                    raise

    def _commit(self, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        uow = self.ctx.uow()
        try:
            with uow as session:
                for job in batch:
                    try:
                        with session.begin_nested():
                            results.append((job, job.work(uow), None))
                    except Exception as exc:
                        results.append((job, None, exc))
        except Exception as exc:  # the commit itself failed: nothing was written
            log.warning("group commit of %d agent requests failed: %s", len(batch), exc)
            results = [(job, None, exc) for job in batch]
        self.batches += 1
        self.jobs += len(batch)
        for job, value, error in results:
            _answer(job, value, error)


def _answer(job: _Job, value: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)

    if not job.loop.is_closed():
        job.loop.call_soon_threadsafe(settle)
