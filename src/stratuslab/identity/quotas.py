"""Quotas: limits per project and per user, and the pure check made before every create.

A :class:`Usage` counts what exists (or is asked for); :class:`Limits` caps each counter
(``None``: unlimited). :func:`check` refuses a request that would take any counter over
its limit, naming every such resource, its limit and current use. A request that does not
increase a counter always passes for that counter, so lowering a limit below current use
never blocks deletes or unrelated creates.

Atomicity is the caller's job. Begin with ``UPDATE quotas SET version = version + 1`` on the
project's row (it locks the row on PostgreSQL and takes the write lock on SQLite before
anything is read). Then count current usage, :func:`check`, insert and commit. See
``docs/identity.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from stratuslab.errors import InvalidInput, QuotaExceeded

#: counter -> (human name, unit shown after numbers)
RESOURCES = {
    "instances": ("instances", ""),
    "vcpus": ("vCPUs", ""),
    "ram_mib": ("RAM", " MiB"),
    "volumes": ("volumes", ""),
    "volume_gib": ("volume storage", " GiB"),
    "public_addresses": ("public addresses", ""),
    "images": ("images", ""),
}


@dataclass(frozen=True)
class Usage:
    instances: int = 0
    vcpus: int = 0
    ram_mib: int = 0
    volumes: int = 0
    volume_gib: int = 0
    public_addresses: int = 0
    images: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{n: getattr(self, n) + getattr(other, n) for n in RESOURCES})

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in RESOURCES}


@dataclass(frozen=True)
class Limits:
    """``None`` means unlimited."""

    instances: int | None = None
    vcpus: int | None = None
    ram_mib: int | None = None
    volumes: int | None = None
    volume_gib: int | None = None
    public_addresses: int | None = None
    images: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {n: getattr(self, n) for n in RESOURCES}


#: what a new project gets unless the admin says otherwise (the original's OpenNebula
#: quota driver defaulted to 20 CPUs)
DEFAULT_PROJECT_LIMITS = Limits(
    instances=20,
    vcpus=20,
    ram_mib=40 * 1024,
    volumes=20,
    volume_gib=500,
    public_addresses=2,
    images=20,
)
UNLIMITED = Limits()


def instances_request(*, count: int, vcpus: int, memory_mib: int) -> Usage:
    return Usage(instances=count, vcpus=count * vcpus, ram_mib=count * memory_mib)


def limits_from_dict(data: Mapping[str, Any], *, base: Limits = UNLIMITED) -> Limits:
    """``base`` with the given counters replaced (``stratus quota set``); ``None``/-1 = no limit."""
    unknown = sorted(set(data) - set(RESOURCES))
    if unknown:
        raise InvalidInput(
            f"unknown quota resource(s): {', '.join(unknown)}",
            hint=f"quota resources: {', '.join(RESOURCES)}",
            code="unknown_quota",
        )
    values: dict[str, int | None] = base.as_dict()
    for name, value in data.items():
        if value is None or value == -1:
            values[name] = None
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            values[name] = value
        else:
            raise InvalidInput(
                f"quota {name} must be a whole number >= 0 (or -1 for no limit), not {value!r}",
                hint="e.g. `stratus quota set PROJECT vcpus=40`",
                code="bad_quota",
            )
    return Limits(**values)


def check(current: Usage, request: Usage, limits: Limits, *, scope: str) -> None:
    """Raise QuotaExceeded if ``current + request`` passes any limit ``request`` raises."""
    over = []
    for f in fields(Usage):
        asked, used, limit = (
            getattr(request, f.name),
            getattr(current, f.name),
            getattr(limits, f.name),
        )
        if asked > 0 and limit is not None and used + asked > limit:
            over.append((f.name, used, asked, limit))
    if not over:
        return
    parts = [
        f"{RESOURCES[n][0]}: {used}{RESOURCES[n][1]} in use + {asked}{RESOURCES[n][1]} "
        f"requested > limit {limit}{RESOURCES[n][1]}"
        for n, used, asked, limit in over
    ]
    raise QuotaExceeded(
        f"quota exceeded for {scope}: " + "; ".join(parts),
        hint="delete something, ask for less, or ask a project admin to raise the quota "
        "(`stratus quota show`)",
        details={
            "scope": scope,
            "exceeded": [
                {"resource": n, "in_use": used, "requested": asked, "limit": limit}
                for n, used, asked, limit in over
            ],
        },
    )


def check_all(
    request: Usage,
    *,
    project: tuple[str, Usage, Limits],
    user: tuple[str, Usage, Limits] | None = None,
) -> None:
    """Check the project's and then the user's quota; each tuple is (name, usage, limits)."""
    name, usage, limits = project
    check(usage, request, limits, scope=f"project {name!r}")
    if user is not None:
        name, usage, limits = user
        check(usage, request, limits, scope=f"user {name!r}")
