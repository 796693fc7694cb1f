"""Accounting: usage records from the event history, CSV/JSON export, EGI APEL records.

Input is a list of small events (the controller turns its ``events`` rows into them):
an instance *started* (with its vCPUs, memory and host), *stopped* or *deleted*; a volume
*created*, *resized* or *deleted* (with its size). Usage counts only while running (for
instances) or existing (for volumes), clipped to the period asked for:

* ``wall_seconds``: running time in the period;
* ``vcpu_hours``: vCPUs x hours; ``ram_gb_hours``: memory in GB (1 GB = 1024 MiB, as
  OpenStack and cASO count) x hours; ``gb_hours`` for volumes.

Events at or after ``period.end`` are ignored, so the status is the one at the end of the
period. An instance still running then counts up to ``period.end``: pass the current time
as the end of the current period. A second *started* while running (e.g.
after a migration to another host) closes one stretch and opens another.

APEL: :func:`apel_message` writes ``APEL-cloud-message: v0.4`` records, one per instance,
with totals since the instance first started (cloud records are cumulative and keyed by
``VMUUID``, so the same instance is simply sent again with bigger numbers).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from stratuslab.errors import InvalidInput

APEL_HEADER = "APEL-cloud-message: v0.4"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InstanceEventKind(StrEnum):
    STARTED = "started"
    STOPPED = "stopped"
    DELETED = "deleted"


class VolumeEventKind(StrEnum):
    CREATED = "created"
    RESIZED = "resized"
    DELETED = "deleted"


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime  # exclusive

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise InvalidInput(
                f"the period ends ({self.end.isoformat()}) before it starts "
                f"({self.start.isoformat()})",
                hint="give --from before --to",
                code="bad_period",
            )

    def overlap(self, start: datetime, end: datetime) -> float:
        """Seconds of ``[start, end)`` inside this period."""
        return max(0.0, (min(end, self.end) - max(start, self.start)).total_seconds())


def lifetime(now: datetime) -> Period:
    """Everything up to ``now`` (for cumulative APEL records)."""
    return Period(EPOCH, now)


@dataclass(frozen=True)
class InstanceEvent:
    time: datetime
    instance_id: str
    kind: InstanceEventKind
    vcpus: int = 0
    memory_mib: int = 0
    host: str = ""
    project_id: str = ""
    user_id: str = ""
    name: str = ""
    image_id: str = ""
    disk_gib: int = 0


@dataclass(frozen=True)
class VolumeEvent:
    time: datetime
    volume_id: str
    kind: VolumeEventKind
    size_gib: int = 0
    project_id: str = ""
    user_id: str = ""


class Status(StrEnum):
    """The APEL completion status at the end of the period."""

    STARTED = "started"  # running
    SUSPENDED = "suspended"  # stopped, not deleted
    COMPLETED = "completed"  # deleted


@dataclass(frozen=True)
class InstanceUsage:
    instance_id: str
    name: str
    project_id: str
    user_id: str
    host: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    image_id: str
    wall_seconds: float
    vcpu_hours: float
    ram_gb_hours: float
    status: Status
    first_started: datetime | None
    deleted_at: datetime | None


@dataclass(frozen=True)
class VolumeUsage:
    volume_id: str
    project_id: str
    user_id: str
    size_gib: int
    gb_hours: float
    seconds: float


@dataclass
class _Run:
    """The state of one instance while walking its events."""

    last: InstanceEvent
    running_since: datetime | None = None
    first_started: datetime | None = None
    deleted_at: datetime | None = None
    host: str = ""
    wall: float = 0.0
    vcpu_hours: float = 0.0
    ram_gb_hours: float = 0.0

    def close(self, at: datetime, period: Period) -> None:
        if self.running_since is None:
            return
        seconds = period.overlap(self.running_since, at)
        if seconds > 0:
            self.wall += seconds
            self.vcpu_hours += self.last.vcpus * seconds / 3600
            self.ram_gb_hours += self.last.memory_mib / 1024 * seconds / 3600
            self.host = self.last.host
        self.running_since = None


def instance_usage(events: Iterable[InstanceEvent], period: Period) -> list[InstanceUsage]:
    """One record per instance that ran during ``period``, in order of first appearance."""
    runs: dict[str, _Run] = {}
    for event in sorted((e for e in events if e.time < period.end), key=lambda e: e.time):
        run = runs.setdefault(event.instance_id, _Run(event))
        _step(run, event, period)
    records = []
    for run in runs.values():
        running = run.running_since is not None
        run.close(period.end, period)
        if run.wall > 0:
            records.append(_record(run, running=running))
    return records


def _step(run: _Run, event: InstanceEvent, period: Period) -> None:
    if run.deleted_at is not None:
        return  # nothing happens to a deleted instance
    if event.kind is InstanceEventKind.STARTED:
        run.close(event.time, period)
        run.last = event
        run.running_since = event.time
        run.first_started = run.first_started or event.time
        return
    run.close(event.time, period)
    if event.kind is InstanceEventKind.DELETED:
        run.deleted_at = event.time


def _record(run: _Run, *, running: bool) -> InstanceUsage:
    if run.deleted_at is not None:
        status = Status.COMPLETED
    elif running:
        status = Status.STARTED
    else:
        status = Status.SUSPENDED
    event = run.last
    return InstanceUsage(
        instance_id=event.instance_id,
        name=event.name,
        project_id=event.project_id,
        user_id=event.user_id,
        host=run.host,
        vcpus=event.vcpus,
        memory_mib=event.memory_mib,
        disk_gib=event.disk_gib,
        image_id=event.image_id,
        wall_seconds=run.wall,
        vcpu_hours=run.vcpu_hours,
        ram_gb_hours=run.ram_gb_hours,
        status=status,
        first_started=run.first_started,
        deleted_at=run.deleted_at,
    )


def volume_usage(events: Iterable[VolumeEvent], period: Period) -> list[VolumeUsage]:
    """GB-hours per volume while it existed during ``period`` (a resize changes the rate)."""
    state: dict[str, tuple[VolumeEvent, datetime | None]] = {}
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event in sorted((e for e in events if e.time < period.end), key=lambda e: e.time):
        previous, since = state.get(event.volume_id, (event, None))
        if since is not None:
            seconds = period.overlap(since, event.time)
            totals[event.volume_id][0] += previous.size_gib * seconds / 3600
            totals[event.volume_id][1] += seconds
        alive = event.kind is not VolumeEventKind.DELETED
        state[event.volume_id] = (event, event.time if alive else None)
    records = []
    for volume_id, (last, since) in state.items():
        if since is not None:
            seconds = period.overlap(since, period.end)
            totals[volume_id][0] += last.size_gib * seconds / 3600
            totals[volume_id][1] += seconds
        gb_hours, seconds = totals[volume_id]
        if seconds > 0:
            records.append(
                VolumeUsage(
                    volume_id, last.project_id, last.user_id, last.size_gib, gb_hours, seconds
                )
            )
    return records


# -- export ----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 6)
    return value


def _rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        if not is_dataclass(record) or isinstance(record, type):
            raise TypeError("usage records are dataclass instances")
        rows.append({k: _plain(v) for k, v in asdict(record).items()})
    return rows


def to_json(records: Sequence[InstanceUsage] | Sequence[VolumeUsage]) -> str:
    return json.dumps(_rows(records), indent=2)


def to_csv(records: Sequence[InstanceUsage] | Sequence[VolumeUsage]) -> str:
    """CSV with a header row (an empty list gives an empty string)."""
    if not records:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=[f.name for f in fields(records[0])], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(_rows(records))
    return out.getvalue()


# -- EGI APEL --------------------------------------------------------------------------


@dataclass(frozen=True)
class ApelSite:
    site_name: str  # the GOCDB site name
    cloud_compute_service: str = ""
    cloud_type: str = "StratusLab"
    benchmark_type: str = ""  # e.g. "HEPSPEC06"; with ``benchmark`` per vCPU
    benchmark: float | None = None


def apel_record(
    usage: InstanceUsage,
    site: ApelSite,
    *,
    global_user_name: str = "",
    fqan: str = "",
) -> dict[str, str]:
    """The fields of one cloud usage record (v0.4), without the empty ones."""
    fields_: dict[str, object] = {
        "VMUUID": usage.instance_id,
        "SiteName": site.site_name,
        "CloudComputeService": site.cloud_compute_service,
        "MachineName": usage.name or usage.instance_id,
        "LocalUserId": usage.user_id,
        "LocalGroupId": usage.project_id,
        "GlobalUserName": global_user_name,
        "FQAN": fqan,
        "Status": usage.status.value,
        "StartTime": _epoch(usage.first_started),
        "EndTime": _epoch(usage.deleted_at),
        "WallDuration": int(usage.wall_seconds),
        "CpuDuration": int(usage.wall_seconds) * usage.vcpus,
        "CpuCount": usage.vcpus,
        "Memory": usage.memory_mib,
        "Disk": usage.disk_gib,
        "ImageId": usage.image_id,
        "CloudType": site.cloud_type,
        "BenchmarkType": site.benchmark_type,
        "Benchmark": site.benchmark,
    }
    return {k: _one_line(v) for k, v in fields_.items() if v not in (None, "")}


def apel_message(
    usages: Iterable[InstanceUsage],
    site: ApelSite,
    *,
    user_dns: Mapping[str, str] | None = None,
    fqans: Mapping[str, str] | None = None,
) -> str:
    """An ``APEL-cloud-message: v0.4`` message: a header, then records each ending in ``%%``.

    ``user_dns`` maps user ids to certificate DNs (``GlobalUserName``); ``fqans`` maps
    project ids to the VO/FQAN they account to.
    """
    lines = [APEL_HEADER]
    for usage in usages:
        record = apel_record(
            usage,
            site,
            global_user_name=(user_dns or {}).get(usage.user_id, ""),
            fqan=(fqans or {}).get(usage.project_id, ""),
        )
        lines.extend(f"{key}: {value}" for key, value in record.items())
        lines.append("%%")
    return "\n".join(lines) + "\n"


def _epoch(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp())


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
