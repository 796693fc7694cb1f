"""Concurrency of placement and host generations on the real databases.

Placements are serialized by one lock (PostgreSQL: an advisory lock; SQLite: the write
transaction), not by locking every host row; a host's desired generation is bumped in SQL, so
two transactions that bump the same host both count.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from stratuslab.db.models import Host
from stratuslab.services.context import Ctx
from stratuslab.services.placement import Placer, lock_placement, snapshot_hosts


def _host(ctx: Ctx, name: str = "h1") -> str:
    with ctx.sessions.begin() as s:
        host = Host(
            name=name, vcpus=8, memory_mib=8192, disk_gib=100, credential_hash=f"hash-{name}"
        )
        s.add(host)
        s.flush()
        return host.id


def _generation(ctx: Ctx, host_id: str) -> int:
    with ctx.sessions() as s:
        host = s.get(Host, host_id)
        assert host is not None
        return host.desired_generation


def test_two_transactions_bumping_one_host_both_count(ctx: Ctx) -> None:
    host_id = _host(ctx)
    if ctx.settings.database_url.startswith("sqlite"):
        for _ in range(2):  # one writer at a time: the bumps are sequential
            with ctx.sessions.begin() as s:
                host = s.get(Host, host_id)
                assert host is not None
                host.bump()
        assert _generation(ctx, host_id) == 2
        return
    # PostgreSQL: both transactions read generation 0 before either writes
    read = threading.Barrier(2)
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            with ctx.sessions.begin() as s:
                host = s.get(Host, host_id)
                assert host is not None and host.desired_generation == 0
                read.wait(timeout=10)
                host.bump()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _generation(ctx, host_id) == 2


def test_a_bumped_host_reads_its_new_generation_in_the_same_transaction(ctx: Ctx) -> None:
    host_id = _host(ctx)
    with ctx.sessions.begin() as s:
        host = s.get(Host, host_id)
        assert host is not None
        host.bump()
        s.flush()
        assert host.desired_generation == 1


def test_a_second_placement_waits_for_the_first(ctx: Ctx) -> None:
    if not ctx.settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite serializes every write transaction already")
    _host(ctx)
    with ctx.sessions.begin() as first:
        Placer(first, ctx.settings)
        with ctx.sessions.begin() as second:
            second.execute(text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(OperationalError, match="lock timeout"):
                lock_placement(second)
            second.rollback()
    with ctx.sessions.begin() as third:  # released with the first transaction
        lock_placement(third)
        assert [h.name for h in snapshot_hosts(third, ctx.settings)] == ["h1"]


def test_a_changed_host_gets_a_new_snapshot(ctx: Ctx) -> None:
    host_id = _host(ctx)
    with ctx.sessions.begin() as s:
        (before,) = snapshot_hosts(s, ctx.settings)
    with ctx.sessions.begin() as s:
        host = s.get(Host, host_id)
        assert host is not None
        host.labels = {"rack": "r7"}
        host.cpu_ratio = 4.0
    with ctx.sessions.begin() as s:
        (after,) = snapshot_hosts(s, ctx.settings)
        (again,) = snapshot_hosts(s, ctx.settings)
    assert before.labels == {} and before.cpu_capacity == 8
    assert after.labels == {"rack": "r7"} and after.cpu_capacity == 32
    assert again is after  # unchanged host: the cached snapshot
