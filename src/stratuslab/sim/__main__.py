"""``python -m stratuslab.sim --hosts 2500 --instances 50000 [--database-url URL]``."""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from stratuslab.sim.pure import all_rates
from stratuslab.sim.report import format_report
from stratuslab.sim.run import SimConfig, run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stratuslab.sim",
        description="Run the real controller with many fake-driver agents and report the numbers.",
    )
    p.add_argument("--hosts", type=int, default=2500)
    p.add_argument("--instances", type=int, default=50000)
    p.add_argument(
        "--database-url",
        help="a PostgreSQL server URL (a fresh database is created on it and dropped after); "
        "default: a SQLite file",
    )
    p.add_argument("--host-vcpus", type=int, default=32)
    p.add_argument("--host-memory-mib", type=int, default=131072)
    p.add_argument("--flavor", default="t1.micro")
    p.add_argument("--batch", type=int, default=100, help="instances per create request")
    p.add_argument("--concurrency", type=int, default=4, help="create requests in flight")
    p.add_argument("--churn-seconds", type=float, default=20.0)
    p.add_argument("--gets", type=int, default=500)
    p.add_argument("--pages", type=int, default=100)
    p.add_argument("--heartbeat-interval", type=float, default=60.0)
    p.add_argument("--no-restart", action="store_true")
    p.add_argument("--no-pure", action="store_true", help="skip the pure scheduler rate")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--keep-database", action="store_true")
    p.add_argument(
        "--profile",
        type=Path,
        help="run the controller under a sampling profiler; one profile per phase goes here",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def config_from(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        hosts=args.hosts,
        instances=args.instances,
        database_url=args.database_url,
        host_vcpus=args.host_vcpus,
        host_memory_mib=args.host_memory_mib,
        flavor=args.flavor,
        batch=args.batch,
        concurrency=args.concurrency,
        churn_seconds=args.churn_seconds,
        gets=args.gets,
        pages=args.pages,
        heartbeat_interval=args.heartbeat_interval,
        restart=not args.no_restart,
        data_dir=args.data_dir,
        keep_database=args.keep_database,
        profile_dir=args.profile,
    )


def raise_fd_limit() -> None:
    """Each agent holds a connection: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    raise_fd_limit()
    report = run(config_from(args))
    pure = [] if args.no_pure else all_rates(args.hosts, 20000)
    if args.json:
        print(json.dumps({"sim": report.to_dict(), "pure": [vars(p) for p in pure]}, indent=2))
    else:
        print(format_report([report], pure))
    ok = report.checks.ok and not report.failures
    return 0 if ok and report.fill.acked == report.fill.requested else 1


if __name__ == "__main__":
    sys.exit(main())
