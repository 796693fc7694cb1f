"""Filters say whether a host can take a request; weighers rank the hosts that can.

Nothing here touches the database: the caller takes a snapshot of hosts (inside the
transaction that will claim the capacity), calls :func:`place`, and writes the claim.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stratuslab.types import HostState


@dataclass(frozen=True)
class HostSnapshot:
    id: str
    name: str
    state: HostState
    arch: str
    vcpus: int
    memory_mib: int
    vcpus_used: int = 0
    memory_used_mib: int = 0
    cpu_ratio: float = 1.0
    ram_ratio: float = 1.0

    @property
    def free_vcpus(self) -> float:
        return self.vcpus * self.cpu_ratio - self.vcpus_used

    @property
    def free_memory_mib(self) -> float:
        return self.memory_mib * self.ram_ratio - self.memory_used_mib


@dataclass(frozen=True)
class Request:
    vcpus: int
    memory_mib: int
    arch: str = "x86_64"


@dataclass(frozen=True)
class Placement:
    host: HostSnapshot | None
    #: why each group of hosts was rejected, e.g. {"not enough RAM": 3}
    rejections: dict[str, int]

    @property
    def reason(self) -> str:
        if not self.rejections:
            return "no hosts are registered"
        parts = [
            f"{n} host{'s' if n != 1 else ''}: {why}"
            for why, n in sorted(self.rejections.items(), key=lambda kv: -kv[1])
        ]
        return "; ".join(parts)


Filter = Callable[[HostSnapshot, Request], str | None]


def state_filter(host: HostSnapshot, _req: Request) -> str | None:
    return None if host.state is HostState.ENABLED else host.state.value


def arch_filter(host: HostSnapshot, req: Request) -> str | None:
    return None if host.arch == req.arch else f"architecture {host.arch}, not {req.arch}"


def cpu_filter(host: HostSnapshot, req: Request) -> str | None:
    return None if host.free_vcpus >= req.vcpus else "not enough free vCPUs"


def ram_filter(host: HostSnapshot, req: Request) -> str | None:
    return None if host.free_memory_mib >= req.memory_mib else "not enough free RAM"


DEFAULT_FILTERS: tuple[Filter, ...] = (state_filter, arch_filter, cpu_filter, ram_filter)


def packing_weight(host: HostSnapshot) -> float:
    """Prefer the fullest host that fits (keeps whole hosts free)."""
    return -host.free_memory_mib


def place(
    request: Request,
    hosts: Sequence[HostSnapshot],
    *,
    filters: Sequence[Filter] = DEFAULT_FILTERS,
    weigher: Callable[[HostSnapshot], float] = packing_weight,
) -> Placement:
    rejections: Counter[str] = Counter()
    fit: list[HostSnapshot] = []
    for host in hosts:
        reason = next((r for f in filters if (r := f(host, request)) is not None), None)
        if reason is None:
            fit.append(host)
        else:
            rejections[reason] += 1
    if not fit:
        return Placement(host=None, rejections=dict(rejections))
    best = max(fit, key=lambda h: (weigher(h), h.name))
    return Placement(host=best, rejections=dict(rejections))


def fits_anywhere(request: Request, hosts: Sequence[HostSnapshot]) -> bool:
    """Could the request fit on some host if that host were empty?"""
    return any(
        h.vcpus * h.cpu_ratio >= request.vcpus and h.memory_mib * h.ram_ratio >= request.memory_mib
        for h in hosts
    )
