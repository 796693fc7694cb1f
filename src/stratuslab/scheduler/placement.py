"""Placement as pure functions over a snapshot of hosts.

Nothing here touches the database: the caller takes a snapshot of hosts (inside the
transaction that will claim the capacity), calls :func:`place` or :func:`place_many` (or
keeps a :class:`~stratuslab.scheduler.board.Board` for the transaction), and writes the
claims. Filters (:mod:`.filters`) say which hosts can take a request, weighers
(:mod:`.weighers`) rank those that can, and a :class:`Policy` chosen by the admin mixes the
weighers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from stratuslab.scheduler.board import Board
from stratuslab.scheduler.filters import first_rejection
from stratuslab.scheduler.model import (
    DEFAULT_POLICY,
    HostSnapshot,
    Placement,
    Policy,
    Request,
    Strategy,
)

__all__ = [
    "DEFAULT_POLICY",
    "Board",
    "HostSnapshot",
    "Placement",
    "Policy",
    "Request",
    "Strategy",
    "explain",
    "fits_anywhere",
    "place",
    "place_many",
]


def place(
    request: Request, hosts: Sequence[HostSnapshot], *, policy: Policy = DEFAULT_POLICY
) -> Placement:
    """The best host for ``request`` (or None), with the rejected hosts grouped by cause."""
    return Board(hosts, policy).place(request)


def place_many(
    requests: Iterable[Request],
    hosts: Sequence[HostSnapshot],
    *,
    policy: Policy = DEFAULT_POLICY,
) -> list[Placement]:
    """Place ``requests`` in order, each seeing the capacity the earlier ones took."""
    board = Board(hosts, policy)
    return [board.place(r) for r in requests]


def explain(request: Request, host: HostSnapshot) -> str | None:
    """Why ``host`` cannot take ``request`` right now (None: it can)."""
    return first_rejection(host, request)


def fits_anywhere(request: Request, hosts: Sequence[HostSnapshot]) -> bool:
    """Could the request fit on some host if that host were empty?"""
    return any(
        h.cpu_capacity >= request.vcpus
        and h.memory_capacity_mib >= request.memory_mib
        and (request.disk_gib <= 0 or h.disk_capacity_gib >= request.disk_gib)
        for h in hosts
    )
