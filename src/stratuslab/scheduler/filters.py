"""Filters: predicates that say why a host cannot take a request (None: it can).

They are applied in :data:`DEFAULT_FILTERS` order and the first reason wins, so each
rejected host is counted once, under its most basic cause. The fast engine in
:mod:`stratuslab.scheduler.board` runs the static ones (those that do not depend on
allocations) through these very functions once per kind of request, and inlines the
capacity and group checks; a test keeps both in step.
"""

from __future__ import annotations

from collections.abc import Callable

from stratuslab.scheduler.model import HostSnapshot, Request
from stratuslab.scheduler.requirements import parse_requirements
from stratuslab.types import HostState

Filter = Callable[[HostSnapshot, Request], str | None]

NO_CPU = "not enough free vCPUs"
NO_RAM = "not enough free RAM"
NO_DISK = "not enough free disk"
REQUIREMENTS = "does not meet the requirements"


def anti_affinity_reason(group: str) -> str:
    return f"already runs a member of anti-affinity group {group}"


def affinity_reason(group: str) -> str:
    return f"runs no member of affinity group {group}"


def state_filter(host: HostSnapshot, _req: Request) -> str | None:
    return None if host.state is HostState.ENABLED else host.state.value


def arch_filter(host: HostSnapshot, req: Request) -> str | None:
    return None if host.arch == req.arch else f"architecture {host.arch}, not {req.arch}"


def hypervisor_filter(host: HostSnapshot, req: Request) -> str | None:
    if req.hypervisor is None or host.hypervisor == req.hypervisor:
        return None
    return f"hypervisor {host.hypervisor or 'unknown'}, not {req.hypervisor}"


def requirements_filter(host: HostSnapshot, req: Request) -> str | None:
    requirement = parse_requirements(req.requirements)
    if requirement is None or requirement.matches(host):
        return None
    return REQUIREMENTS


def anti_affinity_filter(host: HostSnapshot, req: Request) -> str | None:
    group = req.anti_affinity_group
    if group is None or group not in host.groups:
        return None
    return anti_affinity_reason(group)


def affinity_filter(host: HostSnapshot, req: Request) -> str | None:
    """Only meaningful once the group has a member somewhere: :func:`filters_for` drops it
    for the first member, which may go anywhere."""
    group = req.affinity_group
    if group is None or group in host.groups:
        return None
    return affinity_reason(group)


def cpu_filter(host: HostSnapshot, req: Request) -> str | None:
    return None if host.free_vcpus >= req.vcpus else NO_CPU


def ram_filter(host: HostSnapshot, req: Request) -> str | None:
    return None if host.free_memory_mib >= req.memory_mib else NO_RAM


def disk_filter(host: HostSnapshot, req: Request) -> str | None:
    if req.disk_gib <= 0 or host.free_disk_gib >= req.disk_gib:
        return None
    return NO_DISK


#: do not change while instances are placed: evaluated once per kind of request
STATIC_FILTERS: tuple[Filter, ...] = (
    state_filter,
    arch_filter,
    hypervisor_filter,
    requirements_filter,
)
GROUP_FILTERS: tuple[Filter, ...] = (anti_affinity_filter, affinity_filter)
CAPACITY_FILTERS: tuple[Filter, ...] = (cpu_filter, ram_filter, disk_filter)
DEFAULT_FILTERS: tuple[Filter, ...] = STATIC_FILTERS + GROUP_FILTERS + CAPACITY_FILTERS


def filters_for(req: Request, hosts: list[HostSnapshot]) -> tuple[Filter, ...]:
    """The filters that apply to ``req`` over ``hosts`` (affinity only once it has a member)."""
    group = req.affinity_group
    if group is not None and not any(group in h.groups for h in hosts):
        return tuple(f for f in DEFAULT_FILTERS if f is not affinity_filter)
    return DEFAULT_FILTERS


def first_rejection(
    host: HostSnapshot, req: Request, filters: tuple[Filter, ...] = DEFAULT_FILTERS
) -> str | None:
    """Why ``host`` cannot take ``req`` (the first failing filter), or None."""
    for f in filters:
        reason = f(host, req)
        if reason is not None:
            return reason
    return None
