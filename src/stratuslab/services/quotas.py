"""Quotas: limits per project and per user, checked atomically in the creating transaction.

:func:`check_create` is the one call a create makes, in the same transaction as its
INSERT, before it. It locks the project's quota row (``UPDATE quotas SET version =
version + 1 ... RETURNING limits``: PostgreSQL locks the row until the commit; SQLite holds
its write lock from ``BEGIN IMMEDIATE``), then the user's row if the user has limits,
counts what exists from the resource tables and asks the pure
:func:`stratuslab.identity.quotas.check`. Two creates in one project therefore run one
after the other, and neither can count before the other's rows are committed. Nothing
is counted in advance, so nothing can drift.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from stratuslab.db.models import Image, Instance, Project, Quota, User, Volume
from stratuslab.errors import InvalidInput
from stratuslab.identity import quotas as pure
from stratuslab.identity.principal import Principal
from stratuslab.identity.quotas import Limits, Usage
from stratuslab.types import ImageStatus, InstanceStatus

PROJECT = "project"
USER = "user"


def parse_limits(text: str) -> Limits:
    """``"instances=20 vcpus=40"`` (settings) as limits over the built-in defaults."""
    if not text.strip():
        return pure.DEFAULT_PROJECT_LIMITS
    values: dict[str, Any] = {}
    for item in text.replace(",", " ").split():
        name, sep, raw = item.partition("=")
        try:
            values[name] = int(raw)
        except ValueError:
            sep = ""
        if not sep:
            raise InvalidInput(
                f"bad quota item {item!r} in default_project_quota",
                hint="write NAME=NUMBER items, e.g. instances=20 vcpus=40 (-1: no limit)",
                code="bad_quota",
            )
    return pure.limits_from_dict(values, base=pure.DEFAULT_PROJECT_LIMITS)


def stored(limits: Limits) -> dict[str, int]:
    """What the ``limits`` column keeps: only the limited counters."""
    return {name: value for name, value in limits.as_dict().items() if value is not None}


def create_row(session: Session, scope_type: str, scope_id: str, *, limits: dict[str, int]) -> None:
    """Insert a quota row unless it exists (``INSERT ... ON CONFLICT DO NOTHING``)."""
    values = {"scope_type": scope_type, "scope_id": scope_id, "limits": limits, "version": 0}
    if session.get_bind().dialect.name == "postgresql":
        stmt: Any = postgresql.insert(Quota).values(values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(Quota).values(values).on_conflict_do_nothing()
    session.execute(stmt)


def _lock(session: Session, scope_type: str, scope_id: str) -> Limits | None:
    """Take the row lock; the stored limits, or None when there is no row."""
    row = session.execute(
        update(Quota)
        .where(Quota.scope_type == scope_type, Quota.scope_id == scope_id)
        .values(version=Quota.version + 1)
        .returning(Quota.limits)
        .execution_options(synchronize_session=False)
    ).first()
    return None if row is None else pure.limits_from_dict(dict(row[0] or {}))


def usage(session: Session, *, project_id: str | None = None, user_id: str | None = None) -> Usage:
    """What a project (or a user across projects) holds now, counted from the tables."""
    inst_cond: list[Any] = [Instance.status != InstanceStatus.DELETED.value]
    img_cond: list[Any] = [Image.status != ImageStatus.DELETED.value]
    if project_id is not None:
        inst_cond.append(Instance.project_id == project_id)
        img_cond.append(Image.project_id == project_id)
    if user_id is not None:
        inst_cond.append(Instance.owner_id == user_id)
        img_cond.append(Image.owner_id == user_id)
    count, vcpus, ram = session.execute(
        select(
            func.count(Instance.id),
            func.coalesce(func.sum(Instance.vcpus), 0),
            func.coalesce(func.sum(Instance.memory_mib), 0),
        ).where(*inst_cond)
    ).one()
    images = session.scalar(select(func.count(Image.id)).where(*img_cond)) or 0
    vol_cond: list[Any] = [Volume.state.not_in(("deleted", "quarantined"))]
    if project_id is not None:
        vol_cond.append(Volume.project_id == project_id)
    if user_id is not None:
        vol_cond.append(Volume.owner_id == user_id)
    volumes, volume_bytes = session.execute(
        select(func.count(Volume.id), func.coalesce(func.sum(Volume.size_bytes), 0)).where(
            *vol_cond
        )
    ).one()
    # public addresses join here when the network resource hands them out
    return Usage(
        instances=int(count),
        vcpus=int(vcpus),
        ram_mib=int(ram),
        images=int(images),
        volumes=int(volumes),
        volume_gib=-(-int(volume_bytes) // 2**30),
    )


def check_create(session: Session, principal: Principal, request: Usage) -> None:
    """Lock the acting project's (then the user's) quota and refuse a request over it.

    Call it inside the transaction that inserts the new rows, before the INSERT.
    """
    project_id = principal.project_id
    limits = _lock(session, PROJECT, project_id)
    if limits is None:
        create_row(session, PROJECT, project_id, limits=stored(pure.DEFAULT_PROJECT_LIMITS))
        limits = _lock(session, PROJECT, project_id) or pure.DEFAULT_PROJECT_LIMITS
    user_limits = _lock(session, USER, principal.user_id)
    project_name = session.scalar(select(Project.name).where(Project.id == project_id))
    user_part = None
    if user_limits is not None:
        user_name = session.scalar(select(User.name).where(User.id == principal.user_id))
        user_part = (
            user_name or principal.user_id,
            usage(session, user_id=principal.user_id),
            user_limits,
        )
    pure.check_all(
        request,
        project=(project_name or project_id, usage(session, project_id=project_id), limits),
        user=user_part,
    )


def instances_request(*, count: int, vcpus: int, memory_mib: int) -> Usage:
    return pure.instances_request(count=count, vcpus=vcpus, memory_mib=memory_mib)


IMAGE_REQUEST = Usage(images=1)


def get_limits(session: Session, scope_type: str, scope_id: str) -> Limits | None:
    row = session.get(Quota, (scope_type, scope_id))
    return None if row is None else pure.limits_from_dict(dict(row.limits or {}))


def set_limits(
    session: Session, scope_type: str, scope_id: str, changes: dict[str, Any], *, base: Limits
) -> Limits:
    """Apply ``changes`` (``None``/-1: no limit) to the current limits and store them."""
    current = get_limits(session, scope_type, scope_id)
    limits = pure.limits_from_dict(changes, base=current if current is not None else base)
    create_row(session, scope_type, scope_id, limits={})
    session.execute(
        update(Quota)
        .where(Quota.scope_type == scope_type, Quota.scope_id == scope_id)
        .values(limits=stored(limits), version=Quota.version + 1)
        .execution_options(synchronize_session=False)
    )
    return limits
