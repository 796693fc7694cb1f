"""The agent's main loop: after losing the controller it asks for the whole state again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.loop import Agent, host_capacity
from stratuslab.agent.reconcile import Reconciler
from stratuslab.agent.workspace import FakeWorkspace
from stratuslab.drivers.fake import FakeComputeDriver
from stratuslab.errors import ServiceUnavailable
from stratuslab.schemas.agent import DesiredInstance, DesiredState, ImageRef, Report, ReportAck
from stratuslab.types import Hypervisor, PowerState


class Link:
    """A controller that answers, then restarts (unreachable once), then answers again."""

    def __init__(self) -> None:
        self.since: list[int] = []
        self.agent: Agent | None = None

    def desired(self, *, since: int, wait: float, brief: bool = False) -> DesiredState:
        self.since.append(since)
        if len(self.since) == 2:
            raise ServiceUnavailable("controller restarting", hint="retry")
        if len(self.since) == 3 and self.agent is not None:
            self.agent.stopping.set()
        return DesiredState(host_id="h", generation=7, instances=[])

    def report(self, report: Report) -> ReportAck:
        return ReportAck()

    def always_report(self) -> bool:
        return False

    def heartbeat(self, beat: Any) -> None:
        return None


def make_agent(link: Link, **options: Any) -> Agent:
    driver = FakeComputeDriver()
    workspace = FakeWorkspace()
    reconciler = Reconciler(driver, workspace, FakeImageCache(), hypervisor=Hypervisor.QEMU)
    agent = Agent(
        link,  # type: ignore[arg-type]
        reconciler,
        workspace,
        lambda: host_capacity(driver, Path("/")),
        **{"heartbeat_interval": 3600, **options},
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

    def desired(self, *, since: int, wait: float, brief: bool = False) -> DesiredState:
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


CATTLE = "00000000-0000-4000-8000-00000000ca77"
PET = "00000000-0000-4000-8000-000000000be7"


def _desired(*instances: DesiredInstance) -> DesiredState:
    return DesiredState(host_id="h", generation=3, instances=list(instances))


def _instance(iid: str, ha: str) -> DesiredInstance:
    return DesiredInstance(
        id=iid,
        name=iid,
        hostname=iid,
        generation=1,
        desired="running",
        vcpus=1,
        memory_mib=128,
        image=ImageRef(id="img", sha256="0" * 64, format="qcow2", size_bytes=1),
        ssh_port=None,
        ssh_keys=[],
        user_data=None,
        reboot_seq=0,
        reboot_hard=False,
        stop_timeout=1.0,
        ha_policy=ha,
    )


class FlakyLink(Link):
    """Answers with ``state``, or is unreachable while ``down``."""

    def __init__(self, state: DesiredState) -> None:
        super().__init__()
        self.state = state
        self.down = False
        self.reports: list[Report] = []

    def desired(self, *, since: int, wait: float, brief: bool = False) -> DesiredState:
        if self.down:
            raise ServiceUnavailable("controller unreachable", hint="retry")
        return self.state

    def report(self, report: Report) -> ReportAck:
        self.reports.append(report)
        return ReportAck()


def test_a_node_cut_off_from_the_controller_powers_off_its_ha_instances() -> None:
    cattle, pet = _instance(CATTLE, "restart"), _instance(PET, "none")
    link = FlakyLink(_desired(cattle, pet))
    now = [0.0]
    agent = make_agent(link, self_fence_after=40.0, clock=lambda: now[0])
    driver = agent.reconciler.driver
    agent.step(wait=0)
    assert driver.state(CATTLE) is PowerState.RUNNING
    link.down = True
    now[0] = 30.0
    agent.self_fence()  # not yet: the controller waits longer than this before HA acts
    assert driver.state(CATTLE) is PowerState.RUNNING
    now[0] = 41.0
    agent.self_fence()
    assert driver.state(CATTLE) is PowerState.SHUTOFF  # it may be started elsewhere now
    assert driver.state(PET) is PowerState.RUNNING  # HA none: waits for its host
    # the controller is back and still wants cattle here: started again, and told
    agent.sync.lost()  # as run() does on every unanswered call
    link.down = False
    agent.step(wait=0)
    assert driver.state(CATTLE) is PowerState.RUNNING
    assert [e.kind for e in link.reports[-1].events].count("host.self_fenced") == 1
    observed = {o.id: o.status for o in link.reports[-1].instances}
    assert observed == {CATTLE: "running", PET: "running"}


def test_self_fencing_off_by_setting_zero() -> None:
    link = FlakyLink(_desired(_instance(CATTLE, "restart")))
    now = [0.0]
    agent = make_agent(link, clock=lambda: now[0])
    driver = agent.reconciler.driver
    agent.step(wait=0)
    now[0] = 10_000.0
    agent.self_fence()
    assert driver.state(CATTLE) is PowerState.RUNNING


class BriefLink(FlakyLink):
    """Answers ``unchanged`` to a brief long-poll whose generation did not move."""

    def __init__(self, state: DesiredState) -> None:
        super().__init__(state)
        self.asked: list[tuple[int, bool]] = []

    def desired(self, *, since: int, wait: float, brief: bool = False) -> DesiredState:
        self.asked.append((since, brief))
        if brief and since == self.state.generation:
            return DesiredState(host_id="h", generation=since, instances=[], unchanged=True)
        return self.state


def test_an_unchanged_answer_converges_the_last_state_and_a_full_read_comes_now_and_then() -> None:
    link = BriefLink(_desired(_instance(PET, "none")))
    now = [0.0]
    agent = make_agent(link, clock=lambda: now[0], full_resync_interval=300.0)
    driver = agent.reconciler.driver
    agent.step(wait=0)
    assert [[o.id for o in r.instances] for r in link.reports] == [[PET]]
    now[0] = 100.0
    agent.step(wait=0)  # unchanged: converges the state it has (an empty one would destroy)
    assert driver.state(PET) is PowerState.RUNNING
    assert len(link.reports) == 1  # and has no news to send
    now[0] = 301.0
    agent.step(wait=0)  # the whole state again, however quiet the controller was
    assert link.asked == [(-1, False), (3, True), (3, False)]
    assert driver.state(PET) is PowerState.RUNNING
    assert [[o.id for o in r.instances] for r in link.reports] == [[PET], [PET]]  # all again


def test_a_report_carries_only_what_the_controller_does_not_have() -> None:
    cattle, pet = _instance(CATTLE, "restart"), _instance(PET, "none")
    link = BriefLink(_desired(cattle, pet))
    agent = make_agent(link, clock=lambda: 0.0)
    driver = agent.reconciler.driver
    agent.step(wait=0)
    assert {o.id for o in link.reports[-1].instances} == {CATTLE, PET}
    driver.guest_poweroff(PET)
    agent.step(wait=0)
    assert [(o.id, o.status) for o in link.reports[-1].instances] == [(PET, "stopped")]
    # the controller's record changed without this agent (its host was declared offline):
    # a new state says so, and what disagrees with it is sent again
    cattle_now = cattle.model_copy(update={"recorded_status": "unknown"})
    pet_now = pet.model_copy(update={"recorded_status": "stopped"})
    link.state = DesiredState(host_id="h", generation=4, instances=[cattle_now, pet_now])
    agent.step(wait=0)
    assert [(o.id, o.status) for o in link.reports[-1].instances] == [(CATTLE, "running")]
    sent = len(link.reports)
    agent.step(wait=0)  # unchanged, nothing new: nothing sent
    assert len(link.reports) == sent
    agent.sync.lost()  # the controller did not answer: it may have lost what it had
    agent.step(wait=0)
    assert {o.id for o in link.reports[-1].instances} == {CATTLE, PET}


def test_an_unchanged_answer_for_another_state_starts_over() -> None:
    link = BriefLink(_desired(_instance(PET, "none")))
    agent = make_agent(link, clock=lambda: 0.0)
    agent.step(wait=0)
    assert agent.generation == 3
    with pytest.raises(ServiceUnavailable):
        agent.sync.received(
            DesiredState(host_id="h", generation=9, instances=[], unchanged=True), brief=True
        )
