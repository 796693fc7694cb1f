from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from stratuslab.errors import InvalidInput
from stratuslab.identity.accounting import (
    APEL_HEADER,
    ApelSite,
    InstanceEvent,
    InstanceEventKind,
    Period,
    Status,
    VolumeEvent,
    VolumeEventKind,
    apel_message,
    instance_usage,
    lifetime,
    to_csv,
    to_json,
    volume_usage,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
STARTED, STOPPED, DELETED = (
    InstanceEventKind.STARTED,
    InstanceEventKind.STOPPED,
    InstanceEventKind.DELETED,
)


def ev(hours: float, kind: InstanceEventKind, instance: str = "i-1", **kw: object) -> InstanceEvent:
    spec: dict[str, object] = {
        "vcpus": 2,
        "memory_mib": 4096,
        "host": "node1",
        "project_id": "p-1",
        "user_id": "u-1",
        "name": "web",
        "image_id": "img-1",
        "disk_gib": 10,
    }
    spec.update(kw)
    return InstanceEvent(T0 + hours * H, instance, kind, **spec)  # type: ignore[arg-type]


DAY1 = Period(T0, T0 + 24 * H)


def test_one_run_inside_the_period() -> None:
    [usage] = instance_usage([ev(1, STARTED), ev(4, STOPPED)], DAY1)
    assert usage.wall_seconds == 3 * 3600
    assert usage.vcpu_hours == pytest.approx(6)
    assert usage.ram_gb_hours == pytest.approx(12)
    assert usage.host == "node1"
    assert usage.status is Status.SUSPENDED


def test_clipped_to_the_period() -> None:
    events = [ev(-2, STARTED), ev(30, STOPPED)]
    [usage] = instance_usage(events, DAY1)
    assert usage.wall_seconds == 24 * 3600
    assert usage.status is Status.STARTED  # still running at the end of the period
    assert usage.first_started == T0 - 2 * H


def test_still_running_counts_up_to_the_end() -> None:
    [usage] = instance_usage([ev(20, STARTED)], DAY1)
    assert usage.wall_seconds == 4 * 3600
    assert usage.status is Status.STARTED


def test_stops_restarts_and_deletion() -> None:
    events = [ev(0, STARTED), ev(1, STOPPED), ev(2, STARTED), ev(3, DELETED), ev(5, STARTED)]
    [usage] = instance_usage(events, DAY1)
    assert usage.wall_seconds == 2 * 3600  # nothing after deletion
    assert usage.status is Status.COMPLETED
    assert usage.deleted_at == T0 + 3 * H


def test_migration_splits_the_run_and_keeps_the_last_host() -> None:
    events = [ev(0, STARTED, host="node1"), ev(2, STARTED, host="node2", vcpus=4), ev(3, STOPPED)]
    [usage] = instance_usage(events, DAY1)
    assert usage.vcpu_hours == pytest.approx(2 * 2 + 1 * 4)
    assert usage.host == "node2"


def test_events_out_of_order_and_several_instances() -> None:
    events = [
        ev(5, STOPPED, "i-2"),
        ev(1, STARTED, "i-1"),
        ev(4, STARTED, "i-2"),
        ev(2, STOPPED, "i-1"),
    ]
    usages = {u.instance_id: u.wall_seconds for u in instance_usage(events, DAY1)}
    assert usages == {"i-1": 3600, "i-2": 3600}


def test_instances_that_did_not_run_in_the_period_are_left_out() -> None:
    events = [ev(-5, STARTED), ev(-4, STOPPED), ev(30, STARTED, "i-2")]
    assert instance_usage(events, DAY1) == []


def test_events_after_the_period_do_not_change_its_status() -> None:
    [usage] = instance_usage([ev(1, STARTED), ev(25, DELETED)], DAY1)
    assert usage.status is Status.STARTED
    assert usage.deleted_at is None


def test_bad_period() -> None:
    with pytest.raises(InvalidInput, match="before it starts"):
        Period(T0, T0)


def test_volume_gb_hours() -> None:
    events = [
        VolumeEvent(T0 + H, "v-1", VolumeEventKind.CREATED, 10, "p-1", "u-1"),
        VolumeEvent(T0 + 3 * H, "v-1", VolumeEventKind.RESIZED, 20, "p-1", "u-1"),
        VolumeEvent(T0 + 4 * H, "v-1", VolumeEventKind.DELETED, 20, "p-1", "u-1"),
        VolumeEvent(T0 + 22 * H, "v-2", VolumeEventKind.CREATED, 100, "p-1", "u-1"),
    ]
    usages = {u.volume_id: u for u in volume_usage(events, DAY1)}
    assert usages["v-1"].gb_hours == pytest.approx(10 * 2 + 20 * 1)
    assert usages["v-2"].gb_hours == pytest.approx(200)
    assert usages["v-2"].seconds == 2 * 3600


def test_csv_and_json_exports() -> None:
    usages = instance_usage([ev(1, STARTED), ev(2.5, STOPPED)], DAY1)
    rows = list(csv.DictReader(io.StringIO(to_csv(usages))))
    assert rows[0]["instance_id"] == "i-1"
    assert rows[0]["vcpu_hours"] == "3.0"
    assert rows[0]["status"] == "suspended"
    assert rows[0]["deleted_at"] == ""
    data = json.loads(to_json(usages))
    assert data[0]["wall_seconds"] == 5400.0
    assert data[0]["first_started"] == "2026-01-01T01:00:00+00:00"
    assert to_csv([]) == ""


def test_apel_cloud_message() -> None:
    now = T0 + 10 * H
    events = [
        ev(0, STARTED, "i-1"),
        ev(5, DELETED, "i-1"),
        ev(8, STARTED, "i-2", name="batch\nworker"),
    ]
    usages = instance_usage(events, lifetime(now))
    message = apel_message(
        usages,
        ApelSite(
            "STRATUS-TEST",
            cloud_compute_service="cloud.example.org",
            benchmark_type="HEPSPEC06",
            benchmark=10.5,
        ),
        user_dns={"u-1": "/DC=org/CN=Jane Doe"},
        fqans={"p-1": "/atlas"},
    )
    lines = message.splitlines()
    assert lines[0] == APEL_HEADER == "APEL-cloud-message: v0.4"
    assert message.endswith("%%\n")
    records = [
        dict(line.split(": ", 1) for line in chunk.strip().splitlines())
        for chunk in "\n".join(lines[1:]).split("%%")
        if chunk.strip()
    ]
    first, second = records
    assert first == {
        "VMUUID": "i-1",
        "SiteName": "STRATUS-TEST",
        "CloudComputeService": "cloud.example.org",
        "MachineName": "web",
        "LocalUserId": "u-1",
        "LocalGroupId": "p-1",
        "GlobalUserName": "/DC=org/CN=Jane Doe",
        "FQAN": "/atlas",
        "Status": "completed",
        "StartTime": str(int(T0.timestamp())),
        "EndTime": str(int((T0 + 5 * H).timestamp())),
        "WallDuration": "18000",
        "CpuDuration": "36000",
        "CpuCount": "2",
        "Memory": "4096",
        "Disk": "10",
        "ImageId": "img-1",
        "CloudType": "StratusLab",
        "BenchmarkType": "HEPSPEC06",
        "Benchmark": "10.5",
    }
    assert second["Status"] == "started"
    assert second["MachineName"] == "batch worker"  # one record line per field
    assert "EndTime" not in second


def test_apel_without_optional_fields() -> None:
    usages = instance_usage([ev(0, STARTED)], lifetime(T0 + H))
    record = apel_message(usages, ApelSite("S")).splitlines()
    assert "GlobalUserName: " not in "\n".join(record)
    assert not any(line.startswith(("FQAN", "Benchmark", "CloudComputeService")) for line in record)
