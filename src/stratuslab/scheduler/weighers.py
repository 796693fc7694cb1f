"""Weighers: numbers that rank the hosts that passed the filters (higher wins).

Each term lies roughly in [0, 1], so a :class:`~stratuslab.scheduler.model.Policy` mixes
them with plain weights. The fast engine in :mod:`stratuslab.scheduler.board` computes the
same score incrementally; a test checks that it agrees with :func:`score`.
"""

from __future__ import annotations

from stratuslab.scheduler.model import HostSnapshot, Policy, Request, Strategy


def fullness(host: HostSnapshot, req: Request) -> float:
    """Mean share of vCPU and RAM capacity in use once ``req`` is placed on ``host``."""
    cpu = host.cpu_capacity
    ram = host.memory_capacity_mib
    used_cpu = (host.vcpus_used + req.vcpus) / cpu if cpu > 0 else 0.0
    used_ram = (host.memory_used_mib + req.memory_mib) / ram if ram > 0 else 0.0
    return 0.5 * (used_cpu + used_ram)


def packing_weight(host: HostSnapshot, req: Request) -> float:
    """Prefer the fullest host that fits (keeps whole hosts free for big requests)."""
    return fullness(host, req)


def striping_weight(host: HostSnapshot, req: Request) -> float:
    """Prefer the emptiest host (spreads instances, and the risk of losing them)."""
    return 1.0 - fullness(host, req)


def idleness(host: HostSnapshot, req: Request) -> float:
    """1 minus the load per vCPU once ``req``'s vCPUs are busy too (may go below 0)."""
    if host.vcpus <= 0:
        return 0.0
    return 1.0 - (host.load + req.vcpus) / host.vcpus


def image_weight(host: HostSnapshot, req: Request) -> float:
    """1 when the host already caches the request's image (no download before boot)."""
    return 1.0 if req.image is not None and req.image in host.images else 0.0


def strategy_weight(host: HostSnapshot, req: Request, strategy: Strategy) -> float:
    if strategy is Strategy.PACK:
        return packing_weight(host, req)
    if strategy is Strategy.STRIPE:
        return striping_weight(host, req)
    return idleness(host, req)


def score(host: HostSnapshot, req: Request, policy: Policy) -> float:
    """The policy's score of ``host`` for ``req``."""
    total = policy.strategy_weight * strategy_weight(host, req, policy.strategy)
    if policy.load_weight:
        total += policy.load_weight * idleness(host, req)
    if policy.image_weight:
        total += policy.image_weight * image_weight(host, req)
    return total
