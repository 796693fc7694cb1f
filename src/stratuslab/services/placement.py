"""Claiming host capacity for instances, inside the caller's transaction.

The scheduler (``stratuslab.scheduler``) is pure; this module is its only bridge to the
database. :class:`Placer` takes the placement lock (:func:`lock_placement`, held until the
transaction ends, so two controllers or two requests never claim the same capacity) and the
snapshot of every host,
keeps one scheduler :class:`~stratuslab.scheduler.Board` for the whole transaction and
writes each claim (host, forwarded SSH port, generation) on the instance row.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.orm import Session

from stratuslab.config import ControllerSettings
from stratuslab.db.models import Host, Image, Instance, utcnow
from stratuslab.errors import CapacityError
from stratuslab.scheduler import (
    Board,
    HostSnapshot,
    Policy,
    Request,
    Strategy,
    explain,
    fits_anywhere,
)
from stratuslab.types import HostState, InstanceStatus

#: statuses that no longer hold capacity on a host
RELEASED = (InstanceStatus.DELETED.value, InstanceStatus.FAILED.value)


def policy_from(settings: ControllerSettings) -> Policy:
    return Policy(
        strategy=Strategy(settings.scheduler_strategy),
        load_weight=settings.scheduler_load_weight,
        image_weight=settings.scheduler_image_weight,
    )


#: the key of the PostgreSQL advisory lock every placement transaction holds
PLACEMENT_LOCK = 0x5354_5241_5455_53  # "STRATUS"

#: the host columns a snapshot needs, read as plain rows (no ORM object per host) with the
#: JSON columns as their text: a row is the key of its cached snapshot (:func:`_snapshot`)
_SNAPSHOT_COLUMNS = (
    Host.id,
    Host.name,
    Host.state,
    Host.arch,
    Host.hypervisor,
    Host.vcpus,
    Host.memory_mib,
    Host.disk_gib,
    Host.cpu_ratio,
    Host.ram_ratio,
    Host.disk_ratio,
    cast(Host.labels, Text).label("labels"),
    cast(Host.usage, Text).label("usage"),
)


def lock_placement(session: Session) -> None:
    """Serialize placements until the transaction ends, so two requests or two controller
    processes never claim the same capacity. PostgreSQL: one transaction-level advisory lock
    (instead of a row lock on every host, which blocked every heartbeat and report behind a
    placement and dirtied every host row); SQLite: the write transaction is the lock."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(PLACEMENT_LOCK)))


def snapshot_hosts(
    session: Session, settings: ControllerSettings | None = None
) -> list[HostSnapshot]:
    """Every host with its allocations, groups and cached images. Call under
    :func:`lock_placement` when claiming."""
    settings = settings or ControllerSettings()
    hosts = session.execute(select(*_SNAPSHOT_COLUMNS).order_by(Host.name)).all()
    used = {
        host_id: (int(cpu or 0), int(mem or 0), int(disk or 0))
        for host_id, cpu, mem, disk in session.execute(
            select(
                Instance.host_id,
                func.sum(Instance.vcpus),
                func.sum(Instance.memory_mib),
                func.sum(Instance.disk_gib),
            )
            .where(Instance.host_id.is_not(None), Instance.status.not_in(RELEASED))
            .group_by(Instance.host_id)
        )
    }
    groups: dict[str, set[str]] = defaultdict(set)
    for host_id, aff, anti in session.execute(
        select(Instance.host_id, Instance.affinity_group, Instance.anti_affinity_group)
        .where(
            Instance.host_id.is_not(None),
            Instance.status.not_in(RELEASED),
            or_(Instance.affinity_group.is_not(None), Instance.anti_affinity_group.is_not(None)),
        )
        .distinct()
    ):
        groups[str(host_id)].update(g for g in (aff, anti) if g)
    return [
        _snapshot(h, used.get(h.id, (0, 0, 0)), groups.get(h.id, set()), settings) for h in hosts
    ]


#: snapshots by (host row, allocations, groups, cloud ratios): most hosts are unchanged
#: from one placement transaction to the next, so most snapshots are not built again
_snapshots: dict[tuple[Any, ...], HostSnapshot] = {}
_SNAPSHOTS_MAX = 50_000


def _snapshot(
    h: Any, used: tuple[int, int, int], groups: set[str], settings: ControllerSettings
) -> HostSnapshot:
    """``h``: a row of :data:`_SNAPSHOT_COLUMNS`."""
    ratios = (settings.cpu_ratio, settings.ram_ratio, settings.disk_ratio)
    key = (tuple(h), used, frozenset(groups), ratios)
    found = _snapshots.get(key)
    if found is None:
        if len(_snapshots) >= _SNAPSHOTS_MAX:
            _snapshots.clear()
        found = _snapshots[key] = _build_snapshot(h, used, key[2], ratios)
    return found


def _build_snapshot(
    h: Any,
    used: tuple[int, int, int],
    groups: frozenset[str],
    ratios: tuple[float, float, float],
) -> HostSnapshot:
    usage = _json_object(h.usage)
    images = usage.get("images") or []
    return HostSnapshot(
        id=h.id,
        name=h.name,
        state=HostState(h.state),
        arch=h.arch,
        hypervisor=h.hypervisor,
        vcpus=h.vcpus,
        memory_mib=h.memory_mib,
        disk_gib=h.disk_gib,
        vcpus_used=used[0],
        memory_used_mib=used[1],
        disk_used_gib=used[2],
        cpu_ratio=h.cpu_ratio if h.cpu_ratio is not None else ratios[0],
        ram_ratio=h.ram_ratio if h.ram_ratio is not None else ratios[1],
        disk_ratio=h.disk_ratio if h.disk_ratio is not None else ratios[2],
        labels={str(k): str(v) for k, v in _json_object(h.labels).items()},
        groups=groups,
        images=frozenset(str(i) for i in images) if isinstance(images, list) else frozenset(),
        load=float(usage.get("load1") or 0.0),
    )


def _json_object(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text else None
    return value if isinstance(value, dict) else {}


def request_for(inst: Instance, image: Image | None = None) -> Request:
    return Request(
        vcpus=inst.vcpus,
        memory_mib=inst.memory_mib,
        disk_gib=inst.disk_gib,
        requirements=inst.requirements or "",
        affinity_group=inst.affinity_group,
        anti_affinity_group=inst.anti_affinity_group,
        image=image.sha256 if image is not None else None,
    )


def check_possible(request: Request, hosts: list[HostSnapshot]) -> None:
    """Refuse at once a request no host could ever run."""
    if not hosts:
        raise CapacityError(
            "no hypervisor host has joined this cloud",
            hint="start a node agent (`stratus up` does it for a one-host cloud)",
            code="no_hosts",
        )
    if not fits_anywhere(request, hosts):
        biggest = max(hosts, key=lambda h: (h.memory_capacity_mib, h.cpu_capacity))
        raise CapacityError(
            f"the request ({request.vcpus} vCPU, {request.memory_mib} MiB) is bigger than any "
            f"host (the largest takes {biggest.cpu_capacity:g} vCPU, "
            f"{biggest.memory_capacity_mib:g} MiB)",
            hint="choose a smaller --type (`stratus flavor list`)",
            code="too_big_for_any_host",
        )


class Placer:
    """One placement engine per transaction: snapshot once, claim many."""

    def __init__(
        self,
        session: Session,
        settings: ControllerSettings,
        *,
        exclude: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.session = session
        self.settings = settings
        lock_placement(session)
        self.hosts = [h for h in snapshot_hosts(session, settings) if h.id not in exclude]
        #: the host rows claimed on (kept referenced: the session's identity map is weak)
        self.rows: dict[str, Host] = {}
        self.board = Board(self.hosts, policy_from(settings))
        self._ports: dict[str, set[int]] = {}
        self._names = {h.id: h.name for h in self.hosts}

    def check_possible(self, request: Request) -> None:
        check_possible(request, self.hosts)

    def claim(self, inst: Instance, request: Request) -> str | None:
        """Place ``inst`` on the best host; None (and the reason on the row) if nothing fits."""
        result = self.board.place(request)
        if result.host is None:
            inst.status_reason = f"waiting for capacity: {result.reason}"
            return None
        return self._write(inst, result.host.id)

    def why_not(self, request: Request, host_id: str) -> str | None:
        """Why ``host_id`` cannot take ``request`` now (None: it can)."""
        host = next((h for h in self.board.hosts() if h.id == host_id), None)
        if host is None:
            return "it is not a registered host"
        return explain(request, host)

    def claim_on(self, inst: Instance, request: Request, host_id: str) -> str | None:
        """Claim ``host_id`` for ``inst``; or why that host cannot take it now."""
        problem = self.why_not(request, host_id)
        if problem is not None:
            return problem
        hosts = self.board.hosts()
        self.board = Board(
            [_with_claim(h, request) if h.id == host_id else h for h in hosts],
            policy_from(self.settings),
        )
        self._write(inst, host_id)
        return None

    def _write(self, inst: Instance, host_id: str) -> str:
        port = self.free_port(host_id)  # queries (and autoflushes) before the row changes
        inst.host_id, inst.ssh_port = host_id, port
        inst.status = InstanceStatus.SCHEDULED.value
        inst.status_reason = f"placed on {self._names.get(host_id, host_id)}"
        inst.pending_since = None
        host = self.rows.get(host_id) or self.session.get(Host, host_id)
        assert host is not None
        self.rows[host_id] = host
        host.bump()
        return host_id

    def free_port(self, host_id: str) -> int:
        scope = "*" if self.settings.ssh_port_scope == "cloud" else host_id
        used = self._ports.get(scope)
        if used is None:
            query = select(Instance.ssh_port).where(Instance.ssh_port.is_not(None))
            if scope != "*":
                query = query.where(Instance.host_id == host_id)
            used = self._ports[scope] = set(self.session.scalars(query))
        base, count = self.settings.ssh_port_base, self.settings.ssh_port_count
        for port in range(base, base + count):
            if port not in used:
                used.add(port)
                return port
        raise CapacityError(
            f"all {count} forwarded SSH ports of the host are in use",
            hint="raise ssh_port_count in the controller settings or delete instances",
        )


def _with_claim(host: HostSnapshot, req: Request) -> HostSnapshot:
    groups = {g for g in (req.affinity_group, req.anti_affinity_group) if g}
    return HostSnapshot(
        **{
            **host.__dict__,
            "vcpus_used": host.vcpus_used + req.vcpus,
            "memory_used_mib": host.memory_used_mib + req.memory_mib,
            "disk_used_gib": host.disk_used_gib + max(req.disk_gib, 0),
            "groups": host.groups | groups,
        }
    )


def waiting_since(inst: Instance) -> float:
    """Seconds the instance has waited for a host."""
    start = inst.pending_since or inst.created_at
    return (utcnow() - start).total_seconds()
