"""Simulation numbers side by side with issue 5's targets and the published anchors."""

from __future__ import annotations

import math
import os
import platform

from stratuslab.sim.pure import PureRate
from stratuslab.sim.run import SimReport

TARGETS = {
    "pure": ">= 1,000 placements/s at 2,500 hosts",
    "e2e": ">= 200 instances/s placed and acknowledged",
    "get": "p50 <= 5 ms (50,000 instances, PostgreSQL)",
    "page": "p50 <= 50 ms (100 items, 50,000 instances, PostgreSQL)",
    "rss": "<= 1 GiB",
}
ANCHORS = [
    "OpenNebula <= 6.10 mm_sched: <= 2 VMs/s dispatched (30 per 15 s cycle); tested to "
    "1,250 hosts / 20,000 VMs; vm.info 10-60 ms, vmpool.info ~1 s at 20,000 VMs",
    "OpenStack Nova: 8 scheduler processes for 1,000 hosts / 20,000 instances "
    "(fake-driver run: ~40 min to deploy 10,000 instances, ~4 instances/s)",
    "Kubernetes scheduler: 333 pods/s at 500 nodes (reference point)",
]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def _n(value: float | None, fmt: str = "{:,.0f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _mib(value: int) -> str:
    return f"{value / 2**20:,.0f} MiB"


def _rows(r: SimReport) -> list[tuple[str, str, str]]:
    """(metric, value, target) rows for one run."""
    get, page = r.get_one, r.get_page
    churn = r.churn
    churn_rate = churn.deleted / churn.e2e_seconds if churn.e2e_seconds else 0.0
    return [
        ("hosts joined (s)", f"{r.hosts:,} in {r.join_seconds:.1f} s", ""),
        (
            "instances acknowledged (failed requests)",
            f"{r.fill.acked:,} / {r.fill.requested:,} ({r.fill.errors + r.churn.errors})",
            "all (0)",
        ),
        ("API placements/s (fill)", _n(r.fill.placements_per_s), ""),
        ("placed + acknowledged/s (fill)", _n(r.fill.acked_per_s), TARGETS["e2e"]),
        ("create request p50/p99 (ms)", _latency(r.fill.create_latency), ""),
        ("controller CPU during fill (s)", _n(r.fill_controller_cpu_s, "{:,.1f}"), ""),
        (
            "churn: deletes+creates/s (acked)",
            f"{_n(churn_rate)} ({churn.deletes_acked}/{churn.deleted} deleted, "
            f"{churn.acked}/{churn.requested} new)",
            "",
        ),
        ("idle controller CPU (cores)", _n(r.idle_controller_cpu, "{:.2f}"), ""),
        ("GET one instance p50/p99 (ms)", _latency(get), TARGETS["get"]),
        ("GET 100-item page p50/p99 (ms), by cursor", _latency(page), TARGETS["page"]),
        ("  ... at a random offset", _latency(r.get_offset_page), ""),
        (
            "controller RSS now / peak",
            f"{_mib(r.rss_bytes)} / {_mib(r.peak_rss_bytes)}",
            TARGETS["rss"],
        ),
        ("database size", _mib(r.database_bytes), ""),
        ("restart: serving again (s)", _n(r.restart_serving_s, "{:.2f}"), ""),
        ("restart: all agents converged (s)", _n(r.restart_converged_s, "{:.2f}"), ""),
        ("overcommitted hosts", str(r.checks.overcommitted_hosts), "0"),
        (
            "domains / live instances (dup, misplaced)",
            f"{r.checks.domains} / {r.checks.allocated_instances} "
            f"({r.checks.duplicated_domains}, {r.checks.misplaced_domains})",
            "equal (0, 0)",
        ),
    ]


def _latency(lat: object) -> str:
    if lat is None:
        return "-"
    p50 = getattr(lat, "p50_ms", float("nan"))
    p99 = getattr(lat, "p99_ms", float("nan"))
    return f"{p50:.1f} / {p99:.1f}"


def format_report(runs: list[SimReport], pure: list[PureRate]) -> str:
    lines = [f"machine: {machine()}", ""]
    if pure:
        lines.append(f"pure scheduler ({TARGETS['pure']}):")
        for p in pure:
            lines.append(
                f"  {p.label:<40} {p.hosts:>6,} hosts {p.per_second:>9,.0f} placements/s "
                f"({p.placed:,}/{p.placements:,} placed)"
            )
        lines.append("")
    if runs:
        header = ["metric", *(f"{r.backend} ({r.hosts:,} hosts)" for r in runs), "target"]
        table = [header]
        per_run = [_rows(r) for r in runs]
        for i, (metric, _, target) in enumerate(per_run[0]):
            table.append([metric, *(rows[i][1] for rows in per_run), target])
        widths = [max(len(row[c]) for row in table) for c in range(len(header))]
        for row in table:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        lines.append("")
        for r in runs:
            lines.extend(f"{r.backend}: FAILED STEP {f}" for f in r.failures)
    lines.append("anchors:")
    lines.extend(f"  - {a}" for a in ANCHORS)
    return "\n".join(lines)
