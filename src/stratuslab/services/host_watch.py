"""Wake the long-polls of hosts whose desired state another controller process changed.

A change committed in this process wakes the agents waiting on it at once (the
:class:`~stratuslab.services.context.Notifier`). A change committed by another controller
process (several behind a load balancer, or a command-line tool on the database) is not
seen that way: :func:`watch` reads every host's generation every ``interval`` seconds, one
small query for the whole fleet, and wakes the waiters of the hosts whose generation moved.
Without it (a controller started without its background tasks) each waiting long-poll
re-reads its own host's generation now and then instead, which at thousands of hosts costs
a query per host every few seconds.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from stratuslab.db.models import Host
from stratuslab.db.session import read_session
from stratuslab.services.context import Ctx
from stratuslab.services.instances import host_key

log = logging.getLogger(__name__)

#: seconds between two reads of the hosts' generations (how late a change made by another
#: controller process reaches the agents that wait on it)
WATCH_INTERVAL = 2.0


def generations(ctx: Ctx) -> dict[str, int]:
    with read_session(ctx.sessions) as s:
        return {h: int(g) for h, g in s.execute(select(Host.id, Host.desired_generation))}


def moved(before: dict[str, int], now: dict[str, int]) -> list[str]:
    """The notifier keys of the hosts whose generation changed (a new host: none)."""
    return [host_key(h) for h, g in now.items() if before.get(h, g) != g]


async def watch(ctx: Ctx, interval: float = WATCH_INTERVAL) -> None:
    """Run until cancelled; ``ctx.notifier.watching_hosts`` is set while it works."""
    last: dict[str, int] | None = None
    try:
        while True:
            try:
                now = await run_in_threadpool(generations, ctx)
            except Exception as exc:  # the database is away: long-polls re-read themselves
                log.warning("cannot read host generations: %s", exc)
                ctx.notifier.watching_hosts = False
                last = None
                await asyncio.sleep(interval)
                continue
            if last is not None:
                ctx.notifier.notify(*moved(last, now))
            last = now
            ctx.notifier.watching_hosts = True
            await asyncio.sleep(interval)
    finally:
        ctx.notifier.watching_hosts = False
