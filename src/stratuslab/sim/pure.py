"""The scheduler alone: placements per second as a pure function over a synthetic cloud."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from stratuslab.scheduler import Board, HostSnapshot, Policy, Request, Strategy, place
from stratuslab.types import HostState

#: (vCPUs, MiB) of the built-in flavors
FLAVORS = ((1, 512), (1, 1536), (1, 3072), (2, 6144), (4, 8192), (2, 1536), (4, 6144))


def synthetic_hosts(n: int, *, seed: int = 1) -> list[HostSnapshot]:
    """A site's worth of 32-vCPU / 128-GiB hosts: 2 % disabled, 1 % offline, some with
    GPUs, labels per rack, 4x CPU overcommit, a random start allocation."""
    rng = random.Random(seed)
    hosts = []
    for i in range(n):
        state = HostState.ENABLED
        if i % 50 == 7:
            state = HostState.DISABLED
        elif i % 100 == 13:
            state = HostState.OFFLINE
        labels = {"rack": f"r{i // 40:03d}"}
        if i % 20 == 0:
            labels["gpu"] = "yes"
        hosts.append(
            HostSnapshot(
                id=f"host-{i:05d}",
                name=f"node{i:05d}",
                state=state,
                arch="x86_64",
                hypervisor="kvm",
                vcpus=32,
                memory_mib=131072,
                vcpus_used=rng.randint(0, 32),
                memory_used_mib=rng.randint(0, 65536),
                cpu_ratio=4.0,
                ram_ratio=1.0,
                disk_gib=2000,
                labels=labels,
                images=frozenset({f"img-{rng.randrange(10)}"}),
                load=rng.uniform(0, 16),
            )
        )
    return hosts


def synthetic_requests(n: int, *, seed: int = 2, mixed: bool = False) -> list[Request]:
    """Built-in flavors with one of ten images; ``mixed`` adds requirement expressions and
    anti-affinity groups to a fifth of them."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        vcpus, mem = rng.choice(FLAVORS)
        extra: dict[str, str] = {}
        if mixed and i % 5 == 0:
            extra["requirements"] = rng.choice(
                ['LABEL:gpu = "yes"', 'LABEL:rack != "r000" & HYPERVISOR = "kvm"']
            )
        if mixed and i % 5 == 1:
            extra["anti_affinity_group"] = f"svc-{rng.randrange(200)}"
        out.append(
            Request(
                vcpus=vcpus, memory_mib=mem, disk_gib=10, image=f"img-{rng.randrange(10)}", **extra
            )
        )
    return out


@dataclass
class PureRate:
    hosts: int
    placements: int
    placed: int
    seconds: float
    label: str

    @property
    def per_second(self) -> float:
        return self.placements / self.seconds if self.seconds else 0.0


def measure(
    hosts: int, placements: int, *, policy: Policy | None = None, mixed: bool = False
) -> PureRate:
    """``placements`` requests through one :class:`Board` (the board build is counted)."""
    snapshot = synthetic_hosts(hosts)
    requests = synthetic_requests(placements, mixed=mixed)
    policy = policy or Policy()
    t0 = time.perf_counter()
    board = Board(snapshot, policy)
    placed = sum(1 for r in requests if board.place(r).host is not None)
    seconds = time.perf_counter() - t0
    label = f"place_many, {policy.strategy.value}" + (", mixed constraints" if mixed else "")
    return PureRate(hosts, placements, placed, seconds, label)


def measure_single(hosts: int, placements: int) -> PureRate:
    """One :func:`place` call per request (a new board each time: what a caller that does
    not keep a board pays)."""
    snapshot = synthetic_hosts(hosts)
    requests = synthetic_requests(placements)
    t0 = time.perf_counter()
    placed = sum(1 for r in requests if place(r, snapshot).host is not None)
    return PureRate(hosts, placements, placed, time.perf_counter() - t0, "place() one at a time")


def all_rates(hosts: int, placements: int) -> list[PureRate]:
    rates = [measure(hosts, placements, policy=Policy(strategy=s)) for s in Strategy]
    rates.append(measure(hosts, placements, mixed=True))
    rates.append(measure_single(hosts, max(placements // 50, 20)))
    return rates
