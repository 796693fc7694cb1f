"""The control plane at scale: the real controller, thousands of fake-driver agents.

Runs :mod:`stratuslab.sim` against SQLite and (when a server URL is given or
STRATUS_TEST_POSTGRES_URL is set) PostgreSQL, plus the pure scheduler rate, and prints the
numbers side by side with issue 5's targets and the published anchors:

    .venv/bin/python bench/sim.py --hosts 2500 --instances 50000 [--postgres URL] [--only pg]

Every phase is bounded: the fill waits at most max(300 s, instances / 20 s) for the agents'
acknowledgements, the churn runs --churn-seconds, the restart waits at most 600 s.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from stratuslab.sim.__main__ import config_from, parser, raise_fd_limit
from stratuslab.sim.pure import all_rates
from stratuslab.sim.report import format_report
from stratuslab.sim.run import SimReport, run


def main() -> int:
    p = parser()
    p.description = __doc__.splitlines()[0]
    p.add_argument("--postgres", default=os.environ.get("STRATUS_TEST_POSTGRES_URL", ""))
    p.add_argument("--only", choices=["sqlite", "pg"], help="run one backend only")
    p.add_argument("--save", type=Path, help="also write the raw numbers as JSON here")
    args = p.parse_args()
    raise_fd_limit()
    base = config_from(args)
    runs: list[SimReport] = []
    if args.only != "pg":
        runs.append(run(replace(base, database_url=None)))
    if args.only != "sqlite" and args.postgres:
        runs.append(run(replace(base, database_url=args.postgres)))
    pure = [] if args.no_pure else all_rates(args.hosts, 20000)
    print(format_report(runs, pure))
    if args.save is not None:
        data = {"sim": [r.to_dict() for r in runs], "pure": [vars(p) for p in pure]}
        args.save.write_text(json.dumps(data, indent=2))
    return 0 if all(r.checks.ok and not r.failures for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
