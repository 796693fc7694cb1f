"""The values the scheduler works on: host snapshots, requests, policies, placements.

All of them are immutable. A :class:`HostSnapshot` is what the service layer read from the
database inside the transaction that will claim the capacity; the scheduler never reads
anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from stratuslab.types import HostState


@dataclass(frozen=True)
class HostSnapshot:
    """One host as the scheduler sees it.

    Capacity is ``total x ratio`` (the admin's overcommit ratio, 1.0 = none); allocations
    are the sums over the instances that hold capacity on the host. ``groups`` names the
    affinity groups that have a member on the host, ``images`` the images its cache holds
    (ids or sha256, whichever the caller uses in :attr:`Request.image`), ``load`` the
    1-minute load average the agent reported.
    """

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
    hypervisor: str = ""
    disk_gib: int = 0
    disk_used_gib: int = 0
    disk_ratio: float = 1.0
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    groups: frozenset[str] = frozenset()
    images: frozenset[str] = frozenset()
    load: float = 0.0

    @property
    def cpu_capacity(self) -> float:
        return self.vcpus * self.cpu_ratio

    @property
    def memory_capacity_mib(self) -> float:
        return self.memory_mib * self.ram_ratio

    @property
    def disk_capacity_gib(self) -> float:
        return self.disk_gib * self.disk_ratio

    @property
    def free_vcpus(self) -> float:
        return self.cpu_capacity - self.vcpus_used

    @property
    def free_memory_mib(self) -> float:
        return self.memory_capacity_mib - self.memory_used_mib

    @property
    def free_disk_gib(self) -> float:
        return self.disk_capacity_gib - self.disk_used_gib


@dataclass(frozen=True)
class Request:
    """What one instance needs.

    ``requirements`` is an OpenNebula-style expression over host attributes
    (``ARCH = "x86_64" & (FREE_MEMORY > 4096 | LABEL:gpu = "yes")``, see
    :mod:`stratuslab.scheduler.requirements`); empty means none. ``affinity_group``: run on a
    host that already runs a member of this group (anywhere, for the first member);
    ``anti_affinity_group``: never on a host that runs a member. A request with
    ``disk_gib = 0`` is not checked against disk capacity.
    """

    vcpus: int
    memory_mib: int
    arch: str = "x86_64"
    disk_gib: int = 0
    hypervisor: str | None = None
    requirements: str = ""
    affinity_group: str | None = None
    anti_affinity_group: str | None = None
    image: str | None = None


class Strategy(StrEnum):
    """How to choose among the hosts that fit (OpenNebula's policies)."""

    #: fill the fullest host first: keeps whole hosts free for big requests
    PACK = "pack"
    #: spread over the emptiest hosts: fewer instances lost with one host
    STRIPE = "stripe"
    #: prefer the hosts with the lowest measured load per vCPU
    LOAD = "load"


@dataclass(frozen=True)
class Policy:
    """The admin's choice: a strategy and how much each weigher counts.

    A host's score is ``strategy_weight x strategy score + load_weight x idleness +
    image_weight x (1 if the image is cached)``; each term lies roughly in [0, 1], so the
    weights compare directly (the default image bonus beats a quarter of a host's fill).
    """

    strategy: Strategy = Strategy.PACK
    strategy_weight: float = 1.0
    #: extra load-aware term on top of pack or stripe (0: ignore measured load)
    load_weight: float = 0.0
    image_weight: float = 0.25


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Placement:
    host: HostSnapshot | None
    #: why each group of hosts was rejected, e.g. {"not enough free RAM": 3}
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
