"""A small simulation end to end: the real controller process, 50 fake-driver agents in one
event loop, 500 instances, churn, a controller restart — on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stratuslab.sim.report import format_report
from stratuslab.sim.run import SimConfig, SimReport, run

POSTGRES_URL = os.environ.get("STRATUS_TEST_POSTGRES_URL", "")


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], scope="module"
)
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SimReport:
    if request.param == "postgres" and not POSTGRES_URL:
        pytest.skip("STRATUS_TEST_POSTGRES_URL is not set (make test starts PostgreSQL)")
    config = SimConfig(
        hosts=50,
        instances=500,
        database_url=POSTGRES_URL if request.param == "postgres" else None,
        host_vcpus=16,
        host_memory_mib=16384,
        batch=50,
        concurrency=2,
        churn_seconds=2.0,
        churn_concurrency=2,
        gets=50,
        pages=10,
        heartbeat_interval=5.0,
        data_dir=Path(tmp_path_factory.mktemp("sim")),
    )
    return run(config)


@pytest.mark.slow
def test_every_instance_is_placed_and_acknowledged(report: SimReport) -> None:
    assert report.fill.requested == 500
    assert report.fill.errors == report.churn.errors == 0
    assert report.failures == []
    assert report.fill.placed == 500
    assert report.fill.acked == 500
    assert report.churn.deleted > 0
    assert report.churn.deletes_acked == report.churn.deleted
    assert report.churn.acked == report.churn.requested == report.churn.placed


@pytest.mark.slow
def test_no_host_is_overcommitted_and_nothing_runs_twice(report: SimReport) -> None:
    checks = report.checks
    assert checks.hosts == 50
    assert checks.overcommitted_hosts == 0
    assert checks.duplicated_domains == 0
    assert checks.misplaced_domains == 0
    assert checks.domains == checks.allocated_instances == 500
    assert checks.ok


@pytest.mark.slow
def test_measurements_and_restart(report: SimReport) -> None:
    assert report.get_one is not None and report.get_one.samples == 50
    assert report.get_page is not None and report.listed_total == 500
    assert report.get_page.samples >= 5  # the whole list walked by cursor, 100 at a time
    assert report.get_offset_page is not None and report.get_offset_page.samples == 10
    assert report.rss_bytes > 0 and report.database_bytes > 0
    assert report.restart_converged_s is not None  # every agent resynced after the restart
    text = format_report([report], [])
    assert "placed + acknowledged/s" in text and "anchors:" in text
