"""The placement engine: hosts as flat arrays, updated incrementally as instances are placed.

A :class:`Board` is built once per snapshot (one transaction) and answers many requests:

* the static filters (state, architecture, hypervisor, requirement expressions that read
  no free capacity) run once per kind of request, through the functions in
  :mod:`~stratuslab.scheduler.filters`, and their survivors are cached;
* the per-request part of every host's score is cached per request shape;
* each placement is then one tight loop over the candidates (capacity check and score),
  and a commit that touches one host.

This makes ~thousands of placements per second at 2,500 hosts in CPython. The result is
the same as running every filter and weigher function on every host (a test checks it).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stratuslab.scheduler.filters import (
    NO_CPU,
    NO_DISK,
    NO_RAM,
    REQUIREMENTS,
    STATIC_FILTERS,
    Filter,
    affinity_reason,
    anti_affinity_reason,
    first_rejection,
    requirements_filter,
)
from stratuslab.scheduler.model import DEFAULT_POLICY, HostSnapshot, Placement, Policy, Request
from stratuslab.scheduler.model import Strategy as S
from stratuslab.scheduler.requirements import (
    Requirement,
    Value,
    host_attributes,
    parse_requirements,
)
from stratuslab.types import HostState

_NON_REQUIREMENT: tuple[Filter, ...] = tuple(
    f for f in STATIC_FILTERS if f is not requirements_filter
)


@dataclass(frozen=True)
class _Static:
    """Survivors of the static filters for one kind of request, and why the rest failed."""

    indices: list[int]
    rejections: Counter[str]


def _inverse(values: Iterable[float]) -> list[float]:
    return [1.0 / v if v > 0 else 0.0 for v in values]


def _coefficients(policy: Policy) -> tuple[float, float]:
    """(A, B) with score = A x (cpu share + RAM share) + B x load per vCPU, up to a constant
    (see :func:`stratuslab.scheduler.weighers.score`)."""
    sw, lw = policy.strategy_weight, policy.load_weight
    if policy.strategy is S.PACK:
        return sw / 2, -lw
    if policy.strategy is S.STRIPE:
        return -sw / 2, -lw
    return 0.0, -(sw + lw)


class Board:
    """Hosts and their free capacity during one scheduling pass (not thread-safe)."""

    def __init__(self, hosts: Sequence[HostSnapshot], policy: Policy = DEFAULT_POLICY) -> None:
        self.policy = policy
        self._hosts = list(hosts)
        hs = self._hosts
        self._used_cpu = [h.vcpus_used for h in hs]
        self._used_ram = [h.memory_used_mib for h in hs]
        self._used_disk = [h.disk_used_gib for h in hs]
        self._free_cpu = [h.vcpus * h.cpu_ratio - h.vcpus_used for h in hs]
        self._free_ram = [h.memory_mib * h.ram_ratio - h.memory_used_mib for h in hs]
        self._free_disk = [h.disk_gib * h.disk_ratio - h.disk_used_gib for h in hs]
        self._inv_cpu = _inverse(h.vcpus * h.cpu_ratio for h in hs)
        self._inv_ram = _inverse(h.memory_mib * h.ram_ratio for h in hs)
        self._inv_vcpus = _inverse(float(h.vcpus) for h in hs)
        self._load = [h.load for h in hs]
        self._a, self._b = a, b = _coefficients(policy)
        self._base = [
            a * (uc * ic + ur * ir) + b * load * iv
            for uc, ic, ur, ir, load, iv in zip(
                self._used_cpu,
                self._inv_cpu,
                self._used_ram,
                self._inv_ram,
                self._load,
                self._inv_vcpus,
                strict=True,
            )
        ]
        #: hosts that the state, architecture and hypervisor filters cannot tell apart
        self._classes: dict[tuple[HostState, str, str], list[int]] = {}
        for i, h in enumerate(hs):
            self._classes.setdefault((h.state, h.arch, h.hypervisor), []).append(i)
        self._groups: dict[str, set[int]] = {}
        self._images: dict[str, set[int]] = {}
        for i, h in enumerate(hs):
            for g in h.groups:
                self._groups.setdefault(g, set()).add(i)
            for img in h.images:
                self._images.setdefault(img, set()).add(i)
        self._static: dict[tuple[str, str | None, str], _Static] = {}
        self._terms: dict[tuple[int, int, str | None], list[float]] = {}
        self._attrs: list[dict[str, Value]] | None = None
        self._changed: set[int] = set()

    # -- public ----------------------------------------------------------------------------

    def place(self, req: Request) -> Placement:
        """Choose the best host for ``req`` and count it as allocated there.

        The returned host is the snapshot as passed in (before any placement on this
        board); :meth:`hosts` gives the updated snapshots.
        """
        requirement = parse_requirements(req.requirements)
        static = self._static_for(req, requirement)
        rejections = static.rejections.copy()
        candidates = static.indices
        if requirement is not None and requirement.dynamic:
            candidates = self._dynamic_requirements(requirement, candidates, rejections)
        candidates = self._group_filter(req, candidates, rejections)
        best = self._best(req, candidates, rejections)
        if best < 0:
            return Placement(host=None, rejections=dict(rejections))
        self._commit(best, req)
        return Placement(host=self._hosts[best], rejections=dict(rejections))

    def hosts(self) -> list[HostSnapshot]:
        """The snapshots with every placement made so far counted in."""
        return [self._updated(i) if i in self._changed else h for i, h in enumerate(self._hosts)]

    # -- filtering ---------------------------------------------------------------------------

    def _static_for(self, req: Request, requirement: Requirement | None) -> _Static:
        text = requirement.text if requirement is not None and not requirement.dynamic else ""
        key = (req.arch, req.hypervisor, text)
        static = self._static.get(key)
        if static is None:
            static = self._static[key] = self._run_static_filters(
                req, requirement if text else None
            )
        return static

    def _run_static_filters(self, req: Request, requirement: Requirement | None) -> _Static:
        """The state, architecture and hypervisor filters run once per class of hosts (they
        read nothing else); a static requirement expression runs on every survivor."""
        probe = dataclasses.replace(req, requirements="")
        indices: list[int] = []
        rejections: Counter[str] = Counter()
        for members in self._classes.values():
            reason = first_rejection(self._hosts[members[0]], probe, _NON_REQUIREMENT)
            if reason is None:
                indices.extend(members)
            else:
                rejections[reason] += len(members)
        indices.sort()
        if requirement is not None:
            attrs = self._attributes()
            kept = [i for i in indices if requirement(attrs[i])]
            if len(kept) < len(indices):
                rejections[REQUIREMENTS] += len(indices) - len(kept)
            indices = kept
        return _Static(indices, rejections)

    def _dynamic_requirements(
        self, requirement: Requirement, candidates: list[int], rejections: Counter[str]
    ) -> list[int]:
        attrs = self._attributes()
        kept = [i for i in candidates if requirement(attrs[i])]
        if len(kept) < len(candidates):
            rejections[REQUIREMENTS] += len(candidates) - len(kept)
        return kept

    def _group_filter(
        self, req: Request, candidates: list[int], rejections: Counter[str]
    ) -> list[int]:
        group = req.anti_affinity_group
        members = self._groups.get(group) if group is not None else None
        if group is not None and members:
            kept = [i for i in candidates if i not in members]
            if len(kept) < len(candidates):
                rejections[anti_affinity_reason(group)] += len(candidates) - len(kept)
            candidates = kept
        group = req.affinity_group
        members = self._groups.get(group) if group is not None else None
        if group is not None and members:
            kept = [i for i in candidates if i in members]
            if len(kept) < len(candidates):
                rejections[affinity_reason(group)] += len(candidates) - len(kept)
            candidates = kept
        return candidates

    # -- weighing ------------------------------------------------------------------------------

    def _best(self, req: Request, candidates: list[int], rejections: Counter[str]) -> int:
        """The best-scoring candidate with room for ``req`` (-1: none); counts the others."""
        v, m, d = req.vcpus, req.memory_mib, req.disk_gib
        free_cpu, free_ram, free_disk = self._free_cpu, self._free_ram, self._free_disk
        base, terms = self._base, self._terms_for(req)
        best, best_score = -1, float("-inf")
        no_cpu = no_ram = no_disk = 0
        for i in candidates:
            if free_cpu[i] < v:
                no_cpu += 1
            elif free_ram[i] < m:
                no_ram += 1
            elif d > 0 and free_disk[i] < d:
                no_disk += 1
            else:
                score = base[i] + terms[i]
                if score > best_score:
                    best, best_score = i, score
        for reason, n in ((NO_CPU, no_cpu), (NO_RAM, no_ram), (NO_DISK, no_disk)):
            if n:
                rejections[reason] += n
        return best

    def _base_score(self, i: int) -> float:
        """The part of host ``i``'s score that does not depend on the request."""
        share = self._used_cpu[i] * self._inv_cpu[i] + self._used_ram[i] * self._inv_ram[i]
        return self._a * share + self._b * self._load[i] * self._inv_vcpus[i]

    def _terms_for(self, req: Request) -> list[float]:
        """The request-dependent part of every host's score, cached per request shape."""
        image = req.image if self.policy.image_weight else None
        key = (req.vcpus, req.memory_mib, image)
        terms = self._terms.get(key)
        if terms is None:
            a, b, v, m = self._a, self._b, req.vcpus, req.memory_mib
            terms = [
                a * (v * ic + m * ir) + b * v * iv
                for ic, ir, iv in zip(self._inv_cpu, self._inv_ram, self._inv_vcpus, strict=True)
            ]
            for i in self._images.get(image, ()) if image is not None else ():
                terms[i] += self.policy.image_weight
            self._terms[key] = terms
        return terms

    # -- committing ------------------------------------------------------------------------------

    def _commit(self, i: int, req: Request) -> None:
        self._used_cpu[i] += req.vcpus
        self._used_ram[i] += req.memory_mib
        self._used_disk[i] += req.disk_gib
        self._free_cpu[i] -= req.vcpus
        self._free_ram[i] -= req.memory_mib
        self._free_disk[i] -= req.disk_gib
        # until the next heartbeat, assume the new vCPUs are busy (spreads load-aware choices)
        self._load[i] += req.vcpus
        self._base[i] = self._base_score(i)
        for group in (req.affinity_group, req.anti_affinity_group):
            if group is not None:
                self._groups.setdefault(group, set()).add(i)
        if req.image is not None:
            self._cache_image(i, req.image)
        if self._attrs is not None:
            self._attrs[i].update(self._dynamic_attributes(i))
        self._changed.add(i)

    def _cache_image(self, i: int, image: str) -> None:
        holders = self._images.setdefault(image, set())
        if i in holders:
            return
        holders.add(i)
        for (_, _, img), terms in self._terms.items():
            if img == image:
                terms[i] += self.policy.image_weight

    def _attributes(self) -> list[dict[str, Value]]:
        if self._attrs is None:
            self._attrs = [host_attributes(h) for h in self._hosts]
            for i in self._changed:
                self._attrs[i].update(self._dynamic_attributes(i))
        return self._attrs

    def _dynamic_attributes(self, i: int) -> dict[str, Value]:
        return {
            "FREE_CPU": self._free_cpu[i],
            "FREE_MEMORY": self._free_ram[i],
            "FREE_DISK": self._free_disk[i],
            "USED_CPU": float(self._used_cpu[i]),
            "USED_MEMORY": float(self._used_ram[i]),
            "USED_DISK": float(self._used_disk[i]),
            "LOAD": self._load[i],
        }

    def _updated(self, i: int) -> HostSnapshot:
        host = self._hosts[i]
        return dataclasses.replace(
            host,
            vcpus_used=self._used_cpu[i],
            memory_used_mib=self._used_ram[i],
            disk_used_gib=self._used_disk[i],
            load=self._load[i],
            groups=frozenset(g for g, members in self._groups.items() if i in members),
            images=frozenset(img for img, holders in self._images.items() if i in holders),
        )
