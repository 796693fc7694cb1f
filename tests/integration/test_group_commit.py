"""Agents' small writes grouped into one transaction (api/group_commit.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import select

from stratuslab.api.group_commit import GroupCommit
from stratuslab.db.models import Project
from stratuslab.errors import Conflict
from stratuslab.services.context import Ctx, UnitOfWork


def _add(name: str, *, fail: bool = False) -> Callable[[UnitOfWork], str]:
    def work(uow: UnitOfWork) -> str:
        uow.session.add(Project(name=name))
        uow.session.flush()
        if fail:
            raise Conflict(f"{name} refused", hint="none")
        uow.notify(f"project:{name}")
        return name

    return work


def test_jobs_share_a_transaction_and_a_failing_one_rolls_back_alone(ctx: Ctx) -> None:
    group = GroupCommit(ctx)

    async def scenario() -> list[object]:
        return await asyncio.gather(
            *(group.run(_add(n, fail=n == "bad")) for n in ("a", "bad", "b", "c")),
            return_exceptions=True,
        )

    results = asyncio.run(scenario())
    assert results[0] == "a" and results[2] == "b" and results[3] == "c"
    assert isinstance(results[1], Conflict)
    assert group.jobs == 4 and group.batches < 4
    with ctx.sessions() as s:
        names = set(s.scalars(select(Project.name)))
    assert {"a", "b", "c"} <= names and "bad" not in names


def test_a_job_sees_what_earlier_jobs_of_its_batch_wrote(ctx: Ctx) -> None:
    group = GroupCommit(ctx, max_batch=2)

    def count(uow: UnitOfWork) -> int:
        return len(list(uow.session.scalars(select(Project.id))))

    async def scenario() -> tuple[object, ...]:
        first = await group.run(_add("x"))
        return first, await group.run(count)

    first, seen = asyncio.run(scenario())
    assert first == "x" and seen == 1


def test_notifications_go_out_after_the_commit(ctx: Ctx) -> None:
    group = GroupCommit(ctx)
    woken: list[str] = []
    ctx.notifier.notify = lambda *keys: woken.extend(keys)  # type: ignore[method-assign]

    asyncio.run(group.run(_add("n")))
    assert woken == ["project:n"]


@pytest.mark.parametrize("size", [1, 300])
def test_every_caller_is_answered(ctx: Ctx, size: int) -> None:
    group = GroupCommit(ctx, max_batch=64)

    async def scenario() -> list[object]:
        return await asyncio.gather(*(group.run(lambda _uow, i=i: i) for i in range(size)))

    assert asyncio.run(scenario()) == list(range(size))
