"""Converge one host to its desired state. Level-triggered: every pass starts from what is.

Nothing here remembers more than it can rebuild: domains are found by name
(``stratus-<instance id>``), files by path, and the little local state (which generation was
applied, which reboot request was served) lives in the instance directory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from stratuslab.agent.networks import AgentNetworks
from stratuslab.agent.volumes import InstanceVolumes, boot_disk, boot_wait_reason
from stratuslab.agent.workspace import Workspace
from stratuslab.drivers.base import (
    DOMAIN_PREFIX,
    ComputeDriver,
    DomainSpec,
    LiveMigrationDriver,
    MigrationOptions,
    PortForward,
)
from stratuslab.errors import DriverError, ServiceUnavailable, StratusError
from stratuslab.schemas.agent import AgentEvent, DesiredInstance, ImageRef, ObservedInstance
from stratuslab.types import DesiredState, Hypervisor, InstanceStatus, PowerState

#: re-send the ACPI power-off this often while a guest has not stopped
SHUTDOWN_RESEND = 5.0


class Images(Protocol):
    def ensure(self, ref: ImageRef) -> Path: ...


class Saver(Protocol):
    def save(self, instance_id: str, image_id: str) -> None: ...


class NoSaver:
    """For hosts that cannot save disks (simulation): report nothing, do nothing."""

    def save(self, instance_id: str, image_id: str) -> None:
        return None


def domain_name(instance_id: str) -> str:
    return DOMAIN_PREFIX + instance_id


@dataclass
class Result:
    observed: ObservedInstance
    events: list[AgentEvent] = field(default_factory=list)
    #: the instance is between states: poll again soon
    busy: bool = False


class Reconciler:
    def __init__(
        self,
        driver: ComputeDriver,
        workspace: Workspace,
        images: Images,
        *,
        hypervisor: Hypervisor,
        clock: Callable[[], float] = time.monotonic,
        saver: Saver | None = None,
        volumes: InstanceVolumes | None = None,
        networks: AgentNetworks | None = None,
        connect: Callable[[str], ComputeDriver] | None = None,
        migration_uri: str = "",
        migration_stream: str = "",
    ) -> None:
        #: where migration streams to this host go (None: its name's address)
        self.migration_stream = migration_stream or None
        #: opens a driver on another host's hypervisor (the source of a live migration)
        self.connect = connect
        #: this host's hypervisor as the others reach it
        self.migration_uri = migration_uri
        self.saver: Saver = saver or NoSaver()
        #: the node's volume pool (agent/volumes.py); None: this node has none
        self.volumes = volumes
        #: NICs, taps, security groups (agent/networks.py); default: user-mode NAT only
        self.networks = networks or AgentNetworks(None, None)
        self.driver = driver
        self.workspace = workspace
        self.images = images
        self.hypervisor = hypervisor
        self.clock = clock
        #: instance id -> (forced-off deadline, next ACPI resend)
        self._stopping: dict[str, tuple[float, float]] = {}
        #: instance id -> (generation that failed, reason)
        self._failed: dict[str, tuple[int, str]] = {}

    # -- one instance -------------------------------------------------------------------

    def converge(self, inst: DesiredInstance) -> Result:
        try:
            if inst.desired == DesiredState.DELETED.value:
                return self._delete(inst)
            if inst.desired == DesiredState.STOPPED.value:
                return self._stop(inst)
            return self._run(inst)
        except ServiceUnavailable:
            raise  # the controller is away (e.g. restarting): the whole pass is retried
        except StratusError as exc:
            return self._fail(inst, str(exc))

    def _observed(
        self,
        inst: DesiredInstance,
        status: InstanceStatus,
        reason: str = "",
        *,
        current: bool = True,
    ) -> ObservedInstance:
        applied = (
            inst.generation
            if current
            else int(self.workspace.read_state(inst.id).get("generation", 0))
        )
        return ObservedInstance(
            id=inst.id, status=status.value, observed_generation=applied, reason=reason
        )

    def _delete(self, inst: DesiredInstance) -> Result:
        attached = self.volumes.attached(self.driver, inst.id) if self.volumes else []
        self.driver.undefine(inst.id)
        if self.volumes is not None:
            boot = [inst.boot_volume] if inst.boot_volume else []
            self.volumes.released(attached + boot, inst.id)
        self.workspace.remove(inst.id)
        self.networks.release(inst.id)
        self._stopping.pop(inst.id, None)
        self._failed.pop(inst.id, None)
        return Result(
            self._observed(inst, InstanceStatus.DELETED),
            [
                AgentEvent(
                    kind="instance.cleaned", message="domain and disks removed", instance_id=inst.id
                )
            ],
        )

    def _stop(self, inst: DesiredInstance) -> Result:
        state = self.driver.state(inst.id)
        if state is PowerState.RUNNING or state is PowerState.PAUSED:
            return self._stopping_step(inst)
        self._stopping.pop(inst.id, None)
        self._mark_applied(inst)
        events = self._save_if_asked(inst)
        return self._with_volumes(
            inst, Result(self._observed(inst, InstanceStatus.STOPPED), events)
        )

    def _save_if_asked(self, inst: DesiredInstance) -> list[AgentEvent]:
        image_id = inst.save_image_id
        state = self.workspace.read_state(inst.id)
        if image_id is None or state.get("saved") == image_id:
            return []
        self.saver.save(inst.id, image_id)
        state["saved"] = image_id
        self.workspace.write_state(inst.id, state)
        return [
            AgentEvent(
                kind="instance.disk_saved",
                instance_id=inst.id,
                message=f"root disk sent as image {image_id}",
            )
        ]

    def _stopping_step(self, inst: DesiredInstance) -> Result:
        now = self.clock()
        deadline, resend = self._stopping.get(inst.id, (now + inst.stop_timeout, now))
        if now >= deadline:
            self.driver.destroy(inst.id)
            self._stopping.pop(inst.id, None)
            self._mark_applied(inst)
            return Result(
                self._observed(inst, InstanceStatus.STOPPED, "forced off after ACPI timeout"),
                [
                    AgentEvent(
                        kind="instance.forced_off",
                        level="warning",
                        instance_id=inst.id,
                        message=f"guest ignored ACPI power-off for {inst.stop_timeout:.0f} s",
                    )
                ],
            )
        if now >= resend:
            self.driver.shutdown(inst.id)
            resend = now + SHUTDOWN_RESEND
        self._stopping[inst.id] = (deadline, resend)
        return Result(self._observed(inst, InstanceStatus.STOPPING, current=False), busy=True)

    def _run(self, inst: DesiredInstance) -> Result:
        failed = self._failed.get(inst.id)
        if failed is not None and failed[0] == inst.generation:
            return Result(self._observed(inst, InstanceStatus.FAILED, failed[1]))
        self._stopping.pop(inst.id, None)
        state = self.driver.state(inst.id)
        local = self.workspace.read_state(inst.id)
        events: list[AgentEvent] = []
        if state is PowerState.MISSING:
            waiting = boot_wait_reason(inst)
            if waiting:  # the controller wakes this host when the export is there
                return Result(self._observed(inst, InstanceStatus.PROVISIONING, waiting))
            self._provision(inst)
            events.append(
                AgentEvent(
                    kind="instance.started",
                    instance_id=inst.id,
                    message=f"domain defined and started ({self.hypervisor})",
                )
            )
        elif state is PowerState.SHUTOFF or state is PowerState.CRASHED:
            fenced = bool(local.pop("self_fenced", False))
            if local.get("generation") == inst.generation and not fenced:
                return Result(
                    self._observed(inst, InstanceStatus.STOPPED, "the guest powered itself off")
                )
            self.driver.start(inst.id)
            if fenced:
                self.workspace.write_state(inst.id, local)
            events.append(
                AgentEvent(kind="instance.started", instance_id=inst.id, message="domain started")
            )
        elif int(local.get("reboot_seq", 0)) < inst.reboot_seq:
            (self.driver.reset if inst.reboot_hard else self.driver.reboot)(inst.id)
            events.append(
                AgentEvent(
                    kind="instance.rebooted",
                    instance_id=inst.id,
                    message="hard reset" if inst.reboot_hard else "ACPI reboot",
                )
            )
        self.networks.converge_instance(inst, running=True)
        self._mark_applied(inst)
        return self._with_volumes(
            inst, Result(self._observed(inst, InstanceStatus.RUNNING), events)
        )

    def _with_volumes(self, inst: DesiredInstance, result: Result) -> Result:
        """Hot-plug pass (agent/volumes.py): attach and detach until the domain has what
        the controller wants, and say what it has."""
        if self.volumes is None:
            return result
        attached, errors = self.volumes.sync(self.driver, inst)
        result.observed.volumes, result.observed.volume_errors = attached, errors
        for volume_id, reason in errors.items():
            result.events.append(
                AgentEvent(
                    kind="volume.hotplug_failed",
                    level="error",
                    instance_id=inst.id,
                    message=f"volume {volume_id}: {reason}",
                )
            )
        return result

    def _provision(self, inst: DesiredInstance) -> None:
        """Image, disks, seed, domain — undone completely if any step fails."""
        try:
            self.driver.define(self._domain_spec(inst))
            self.networks.before_start(inst)
            self.driver.start(inst.id)
        except BaseException:
            self._cleanup(inst.id)
            raise

    def _domain_spec(self, inst: DesiredInstance) -> DomainSpec:
        """The image in the cache, the instance's disks and seed made, its domain described."""
        base = self.images.ensure(inst.image)
        disks = self.workspace.prepare(inst, base)
        boot = boot_disk(self.volumes, inst)
        if boot is not None:
            disks = (boot, *disks[1:])
        forwards = (
            (PortForward(host_port=inst.ssh_port),) if inst.ssh_port else ()
        ) + self.networks.user_forwards(inst)
        return DomainSpec(
            uuid=inst.id,
            name=domain_name(inst.id),
            vcpus=inst.vcpus,
            memory_mib=inst.memory_mib,
            disks=disks,
            console_log=self.workspace.console_log(inst.id),
            hypervisor=self.hypervisor,
            port_forwards=forwards,
            user_network_egress=inst.egress,
            metadata={"instance": inst.id, "name": inst.name},
            user_network=self.networks.user_network(inst),
            nics=self.networks.domain_nics(inst),
            volumes=self.volumes.define_time(inst) if self.volumes else (),
        )

    # -- live migration (docs/adr/0004-live-migration.md) ------------------------------------

    def migrate_in(self, inst: DesiredInstance) -> list[AgentEvent]:
        """Pull the running instance here from ``inst.migrate_from``: this host prepares the
        disks (an overlay on the same cached base, the seed) and asks the source hypervisor to
        send the domain with the top disk layer; the guest never stops."""
        failed = self._failed.get(inst.id)
        if failed is not None and failed[0] == inst.generation:
            return []  # reported already; the controller ends the attempt
        done = AgentEvent(
            kind="instance.migrated_live",
            instance_id=inst.id,
            message=f"live-migrated here from {inst.migrate_from}",
        )
        if self.driver.state(inst.id) in (PowerState.RUNNING, PowerState.PAUSED):
            return [done]  # landed on an earlier pass; the report was lost
        try:
            if self.connect is None or not self.migration_uri:
                raise DriverError(
                    "this host cannot receive live migrations",
                    hint="set migration_uri (STRATUS_NODE_MIGRATION_URI) on this node",
                    code="migration_unsupported",
                )
            spec = self._domain_spec(inst)
            source = self.connect(str(inst.migrate_from))
            try:
                if not isinstance(source, LiveMigrationDriver):
                    raise DriverError(
                        "the source hypervisor's driver cannot live-migrate",
                        hint="move the instance cold (`stratus migrate` without --live)",
                        code="migration_unsupported",
                    )
                source.migrate_live(
                    inst.id,
                    self.migration_uri,
                    dest=spec,
                    options=MigrationOptions(
                        copy_storage=True, migration_uri=self.migration_stream
                    ),
                )
            finally:
                source.close()
        except StratusError as exc:
            self._failed[inst.id] = (inst.generation, exc.message)
            self.workspace.remove(inst.id)
            return [
                AgentEvent(
                    kind="instance.migrate_failed",
                    level="error",
                    instance_id=inst.id,
                    message=exc.message,
                )
            ]
        self._mark_applied(inst)
        return [done]

    def self_fence(self, instance_id: str) -> AgentEvent | None:
        """Power the instance off (disks kept) because this host lost the controller and HA
        may start it elsewhere; it is started again if the controller still wants it here."""
        if self.driver.state(instance_id) not in (PowerState.RUNNING, PowerState.PAUSED):
            return None
        state = self.workspace.read_state(instance_id)
        state["self_fenced"] = True
        self.workspace.write_state(instance_id, state)
        self.driver.destroy(instance_id)
        return AgentEvent(
            kind="host.self_fenced",
            level="warning",
            instance_id=instance_id,
            message=f"powered off instance {instance_id}: the controller was unreachable and "
            "its HA policy may restart it on another host",
        )

    def _cleanup(self, instance_id: str) -> None:
        with contextlib.suppress(StratusError):
            self.driver.undefine(instance_id)
        self.workspace.remove(instance_id)
        with contextlib.suppress(StratusError):
            self.networks.release(instance_id)

    def _fail(self, inst: DesiredInstance, reason: str) -> Result:
        self._failed[inst.id] = (inst.generation, reason)
        return Result(
            self._observed(inst, InstanceStatus.FAILED, reason),
            [AgentEvent(kind="instance.error", level="error", message=reason, instance_id=inst.id)],
        )

    def _mark_applied(self, inst: DesiredInstance) -> None:
        state = self.workspace.read_state(inst.id)
        if (
            state.get("generation") == inst.generation
            and state.get("reboot_seq") == inst.reboot_seq
        ):
            return
        state.update(generation=inst.generation, reboot_seq=inst.reboot_seq)
        self.workspace.write_state(inst.id, state)

    # -- the whole host -----------------------------------------------------------------

    def collect_garbage(self, keep: set[str]) -> list[AgentEvent]:
        """Destroy what this host has of instances it must not have (fencing).

        Ownership is the workspace: an instance directory exists before its domain is defined
        and is removed after it is undefined, so domains of other agents sharing the same
        libvirt daemon are never touched.
        """
        events: list[AgentEvent] = []
        for instance_id in sorted(self.workspace.instance_ids() - keep):
            self._cleanup(instance_id)
            self._stopping.pop(instance_id, None)
            self._failed.pop(instance_id, None)
            events.append(
                AgentEvent(
                    kind="host.fenced",
                    level="warning",
                    message=f"removed instance {instance_id}: not assigned to this host",
                    instance_id=instance_id,
                )
            )
        return events
