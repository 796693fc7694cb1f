"""The agent's main loop: after losing the controller it asks for the whole state again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.loop import Agent, host_capacity
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.workspace import FakeWorkspace
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.errors import ServiceUnavailable
from stratuslab.schemas.agent import DesiredState, Report, ReportAck
from stratuslab.types import Hypervisor


class Link:
    """A controller that answers, then restarts (unreachable once), then answers again."""

    def __init__(self) -> None:
        self.since: list[int] = []
        self.agent: Agent | None = None

    def desired(self, *, since: int, wait: float) -> DesiredState:
        self.since.append(since)
        if len(self.since) == 2:
            raise ServiceUnavailable("controller restarting", hint="retry")
        if len(self.since) == 3 and self.agent is not None:
            self.agent.stopping.set()
        return DesiredState(host_id="h", generation=7, instances=[])

    def report(self, report: Report) -> ReportAck:
        return ReportAck()

    def heartbeat(self, beat: Any) -> None:
        return None


def make_agent(link: Link) -> Agent:
    driver = FakeComputeDriver()
    workspace = FakeWorkspace()
    reconciler = Reconciler(driver, workspace, FakeImageCache(), hypervisor=Hypervisor.QEMU)
    agent = Agent(
        link,  # type: ignore[arg-type]
        reconciler,
        workspace,
        lambda: host_capacity(driver, Path("/")),
        heartbeat_interval=3600,
    )
    link.agent = agent
    return agent


def test_agent_resyncs_fully_after_the_controller_was_away() -> None:
    link = Link()
    agent = make_agent(link)
    agent.stopping.wait = lambda timeout=None: False  # type: ignore[method-assign]
    agent.run()
    assert link.since == [-1, 7, -1]


class WaitingLink(Link):
    """A long-poll during which SIGTERM arrives (the handler calls ``agent.stop()``)."""

    def desired(self, *, since: int, wait: float) -> DesiredState:
        self.since.append(since)
        assert self.agent is not None
        if len(self.since) == 2:
            self.agent.stop()  # raises inside the wait, as the signal handler would
            raise AssertionError("stop() during a long-poll must interrupt it")
        return DesiredState(host_id="h", generation=7, instances=[])


def test_stop_during_a_long_poll_ends_the_agent_at_once() -> None:
    link = WaitingLink()
    agent = make_agent(link)
    agent.run()  # returns instead of raising or waiting for the next pass
    assert link.since == [-1, 7]
    assert agent.stopping.is_set() and not agent.polling
    agent.stop()  # outside a long-poll: only flags the stop
    assert agent.stopping.is_set()
