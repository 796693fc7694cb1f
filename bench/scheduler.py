"""The pure scheduler's placement rate at site scale (no database, no HTTP).

Builds a synthetic cloud (2,500 hosts of 32 vCPU / 128 GiB with 4x CPU overcommit, labels,
disabled and offline hosts, a random start allocation) and places built-in-flavor requests
through one Board per strategy, then with requirement expressions and anti-affinity mixed
in, then one ``place()`` call per request (a new board each time). Prints each rate next to
the target (>= 1,000 placements/s at 2,500 hosts) and the anchors:

    .venv/bin/python bench/scheduler.py [--hosts 2500] [--placements 20000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from stratuslab.sim.pure import all_rates
from stratuslab.sim.report import ANCHORS, TARGETS, machine

TARGET = 1000.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=2500)
    p.add_argument("--placements", type=int, default=20000)
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(f"target: {TARGETS['pure']}\n")
    worst = float("inf")
    for rate in all_rates(args.hosts, args.placements):
        worst = min(worst, rate.per_second) if "one at a time" not in rate.label else worst
        print(
            f"{rate.label:<40} {rate.hosts:>6,} hosts  {rate.per_second:>9,.0f} placements/s  "
            f"x{rate.per_second / TARGET:5.1f} target  x{rate.per_second / 2.0:8,.0f} OpenNebula "
            f"({rate.placed:,}/{rate.placements:,} placed)"
        )
    print("\nanchors:")
    for anchor in ANCHORS:
        print(f"  - {anchor}")
    return 0 if worst >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
