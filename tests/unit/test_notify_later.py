"""Notifications asked for with only a session are sent when its unit of work commits."""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from stratuslab.config import ControllerSettings
from stratuslab.services.context import Ctx, notify_later


class Recorder:
    def __init__(self) -> None:
        self.sent: list[set[str]] = []

    def notify(self, *keys: str) -> None:
        self.sent.append(set(keys))


def ctx() -> tuple[Ctx, Recorder]:
    recorder = Recorder()
    c = Ctx(settings=ControllerSettings(), sessions=sessionmaker(bind=create_engine("sqlite://")))
    c.notifier = recorder  # type: ignore[assignment]
    return c, recorder


def test_notify_later_is_sent_after_the_commit_with_the_uow_keys() -> None:
    c, recorder = ctx()
    uow = c.uow()
    with uow as session:
        uow.notify("op:1")
        notify_later(session, "host:a", "host:b")
        assert recorder.sent == []  # nothing before the commit
    assert recorder.sent == [{"op:1", "host:a", "host:b"}]


def test_a_rolled_back_unit_sends_nothing_and_leaves_nothing_behind() -> None:
    c, recorder = ctx()
    uow = c.uow()
    try:
        with uow as session:
            notify_later(session, "host:a")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert recorder.sent == []
    with c.uow():
        pass
    assert recorder.sent == []
