"""Placement as pure functions over a snapshot of hosts.

Public API: :class:`HostSnapshot`, :class:`Request`, :class:`Policy` (:class:`Strategy`),
:class:`Placement`, :func:`place`, :func:`place_many`, :class:`Board` (incremental, one per
transaction), :func:`fits_anywhere`, :func:`explain`, and :func:`parse_requirements` for
requirement expressions.
"""

from stratuslab.scheduler.model import (
    DEFAULT_POLICY,
    HostSnapshot,
    Placement,
    Policy,
    Request,
    Strategy,
)
from stratuslab.scheduler.placement import Board, explain, fits_anywhere, place, place_many
from stratuslab.scheduler.requirements import Requirement, parse_requirements

__all__ = [
    "DEFAULT_POLICY",
    "Board",
    "HostSnapshot",
    "Placement",
    "Policy",
    "Request",
    "Requirement",
    "Strategy",
    "explain",
    "fits_anywhere",
    "parse_requirements",
    "place",
    "place_many",
]
