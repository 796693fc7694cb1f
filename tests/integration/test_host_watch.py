"""services/host_watch.py: a change another controller process commits wakes the agents
waiting on this one, without each long-poll re-reading its host."""

from __future__ import annotations

import asyncio

from stratuslab.api.app import build_ctx
from stratuslab.db.models import Host
from stratuslab.services import host_watch
from stratuslab.services.context import Ctx
from stratuslab.services.instances import host_key


def _host(ctx: Ctx, name: str) -> str:
    with ctx.uow() as s:
        host = Host(name=name, credential_hash=name * 8)
        s.add(host)
        s.flush()
        return host.id


def test_moved_names_the_hosts_whose_generation_changed() -> None:
    assert host_watch.moved({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == [host_key("b")]


def test_a_bump_by_another_process_wakes_the_waiters_here(ctx: Ctx) -> None:
    one, two = _host(ctx, "one"), _host(ctx, "two")
    other = build_ctx(ctx.settings, migrate=False)  # another controller process
    try:

        async def scenario() -> tuple[bool, bool, bool]:
            watcher = asyncio.create_task(host_watch.watch(ctx, interval=0.05))
            with (
                ctx.notifier.subscribe(host_key(one)) as woken,
                ctx.notifier.subscribe(host_key(two)) as quiet,
            ):
                while not ctx.notifier.watching_hosts:
                    await asyncio.sleep(0.01)
                with other.uow() as s:
                    host = s.get(Host, one)
                    assert host is not None
                    host.bump()
                await asyncio.wait_for(woken.wait(), timeout=30)
                await asyncio.sleep(0.2)  # a few more passes: nothing else moved
                watching = ctx.notifier.watching_hosts
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            return woken.is_set(), quiet.is_set(), watching

        woken, quiet, watching = asyncio.run(scenario())
        assert woken and not quiet and watching
        assert not ctx.notifier.watching_hosts  # the long-polls re-read themselves again
    finally:
        other.close()
