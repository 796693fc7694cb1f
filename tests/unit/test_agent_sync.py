"""agent/sync.py: what an agent sends and asks for, given what the controller already has."""

from __future__ import annotations

import pytest

from stratuslab.agent.sync import Sync
from stratuslab.errors import ServiceUnavailable
from stratuslab.schemas.agent import (
    AgentEvent,
    DesiredInstance,
    DesiredState,
    ObservedInstance,
    Report,
)
from tests.unit.test_agent_loop import _instance


def _desired(iid: str, recorded: str = "") -> DesiredInstance:
    return _instance(iid, "none").model_copy(update={"recorded_status": recorded})


def _state(generation: int, *instances: DesiredInstance) -> DesiredState:
    return DesiredState(host_id="h", generation=generation, instances=list(instances))


def _obs(iid: str, status: str = "running", reason: str = "") -> ObservedInstance:
    return ObservedInstance(id=iid, status=status, observed_generation=1, reason=reason)


def _pass(sync: Sync, state: DesiredState, *obs: ObservedInstance, busy: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    report = sync.news(Report(instances=list(obs)), busy)
    sent = [o.id for o in report.instances]
    sync.reported(report, state.generation, (i.id for i in state.instances))
    return sent


def test_only_changed_observations_are_sent() -> None:
    now = [0.0]
    sync = Sync(300.0, lambda: now[0])
    assert sync.query() == (-1, False)
    state = sync.received(_state(3, _desired("a"), _desired("b")), brief=False)
    assert _pass(sync, state, _obs("a"), _obs("b")) == ["a", "b"]
    assert sync.query() == (3, True)
    assert _pass(sync, state, _obs("a"), _obs("b")) == []
    assert _pass(sync, state, _obs("a"), _obs("b", reason="disk 50%")) == ["b"]
    assert _pass(sync, state, _obs("a"), _obs("b", reason="disk 50%"), busy=("a",)) == ["a"]
    assert not Sync.worth_sending(Report())
    assert Sync.worth_sending(Report(events=[AgentEvent(kind="k", message="m")]))


def test_a_status_the_controller_recorded_otherwise_is_sent_again() -> None:
    sync = Sync(300.0, lambda: 0.0)
    state = sync.received(_state(3, _desired("a")), brief=False)
    assert _pass(sync, state, _obs("a")) == ["a"]
    state = sync.received(_state(4, _desired("a", recorded="unknown")), brief=True)
    assert _pass(sync, state, _obs("a")) == ["a"]
    assert _pass(sync, state, _obs("a")) == []  # acknowledged: the controller has it now


def test_everything_again_after_a_full_resync_or_losing_the_controller() -> None:
    now = [0.0]
    sync = Sync(300.0, lambda: now[0])
    state = sync.received(_state(3, _desired("a")), brief=False)
    assert _pass(sync, state, _obs("a")) == ["a"]
    unchanged = DesiredState(host_id="h", generation=3, instances=[], unchanged=True)
    assert sync.received(unchanged, brief=True) is state
    now[0] = 301.0
    assert sync.query() == (3, False)  # time for the whole state
    state = sync.received(_state(3, _desired("a")), brief=False)
    assert _pass(sync, state, _obs("a")) == ["a"]
    sync.lost()
    assert sync.query() == (-1, True)
    assert _pass(sync, state, _obs("a")) == ["a"]


def test_instances_gone_from_the_state_are_forgotten() -> None:
    sync = Sync(300.0, lambda: 0.0)
    state = sync.received(_state(3, _desired("a")), brief=False)
    assert _pass(sync, state, _obs("a")) == ["a"]
    empty = sync.received(_state(4), brief=True)
    assert _pass(sync, empty) == []
    again = sync.received(_state(5, _desired("a")), brief=True)  # back (a migration home)
    assert _pass(sync, again, _obs("a")) == ["a"]


def test_an_unchanged_answer_for_a_state_not_kept_is_refused() -> None:
    sync = Sync(300.0, lambda: 0.0)
    unchanged = DesiredState(host_id="h", generation=3, instances=[], unchanged=True)
    with pytest.raises(ServiceUnavailable):
        sync.received(unchanged, brief=True)
