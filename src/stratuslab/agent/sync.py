"""What an agent knows of the controller's view of its host, so that a pass sends only news.

Every pass of an agent (:class:`stratuslab.agent.loop.Agent`, and the simulator's
:class:`stratuslab.sim.agents.SimAgent`) reads the desired state, converges it and reports.
:class:`Sync` keeps what both sides of that exchange already agree on:

* the desired state read last and its generation: a long-poll that ends with nothing
  changed answers ``unchanged`` and the agent converges the state it has; the whole state is
  read again at least every ``full_resync_interval`` seconds all the same;
* the observations the controller acknowledged: a report carries only the instances whose
  observation differs from the one the controller has (a host of 20 quiet instances that
  starts a 21st reports one, not 21). The controller's record can change without this agent
  (a host declared offline marks its instances ``unknown``); each desired instance carries
  the status the controller recorded (``recorded_status``) and an observation that
  disagrees with it is sent again. An instance between states (booting, waiting for a
  volume of another host) is reported on every pass all the same.

Everything is forgotten when the controller was unreachable (it may have restarted from a
backup) and at every full resync: the next report then carries every instance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from stratuslab.errors import ServiceUnavailable
from stratuslab.schemas.agent import DesiredState, ObservedInstance, Report


class Sync:
    def __init__(self, full_resync_interval: float, clock: Callable[[], float]) -> None:
        self.full_resync_interval = full_resync_interval
        self.clock = clock
        #: the generation of the desired state converged last (-1: none, ask for it all)
        self.generation = -1
        #: the last whole state read, and when
        self.last_state: DesiredState | None = None
        self.last_full = -math.inf
        #: instance id -> the observation the controller acknowledged last
        self._acked: dict[str, ObservedInstance] = {}
        #: instance id -> the status the controller had recorded in the last whole state
        self._recorded: dict[str, str] = {}

    def query(self) -> tuple[int, bool]:
        """``since`` and ``brief`` for the next desired-state long-poll."""
        brief = (
            self.last_state is not None
            and self.clock() - self.last_full < self.full_resync_interval
        )
        return self.generation, brief

    def received(self, state: DesiredState, *, brief: bool) -> DesiredState:
        """The state to converge, given the controller's answer to a query made with
        ``brief``: the last whole state again when the answer is ``unchanged``."""
        if state.unchanged:
            if self.last_state is None or state.generation != self.last_state.generation:
                # cannot happen (``since`` is the generation of the state kept): start over
                raise ServiceUnavailable(
                    "the controller answered 'unchanged' for a state this agent does not have",
                    hint="the agent reads the whole desired state again",
                )
            return self.last_state
        if not brief:
            self._acked.clear()  # a full resync: report everything once more
        self.last_state, self.last_full = state, self.clock()
        self._recorded = {i.id: i.recorded_status for i in state.instances}
        return state

    def news(self, report: Report, busy: Iterable[str] = ()) -> Report:
        """``report`` without the observations the controller already has, except those of
        ``busy`` instances (between states: the controller's level-triggered checks, such as
        asking another host to export a volume one waits for, run on their reports)."""
        between = set(busy)
        report.instances = [o for o in report.instances if o.id in between or self._is_news(o)]
        return report

    def _is_news(self, obs: ObservedInstance) -> bool:
        if self._acked.get(obs.id) != obs:
            return True
        recorded = self._recorded.get(obs.id, "")
        return bool(recorded) and recorded != obs.status

    @staticmethod
    def worth_sending(report: Report) -> bool:
        return bool(report.instances or report.events or report.console or report.volumes)

    def reported(self, report: Report, generation: int, keep: Iterable[str]) -> None:
        """The controller accepted ``report`` after a pass over the state of
        ``generation`` whose instances are ``keep``."""
        for obs in report.instances:
            self._acked[obs.id] = obs
            self._recorded[obs.id] = obs.status
        wanted = set(keep)
        for gone in set(self._acked) - wanted:
            del self._acked[gone]
        self.generation = generation

    def lost(self) -> None:
        """The controller did not answer: ask for everything and report everything next."""
        self.generation = -1
        self._acked.clear()
