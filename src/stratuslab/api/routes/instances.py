from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.api.deps import CtxDep, PrincipalDep, ReadingPrincipalDep, ReadsDep
from stratuslab.db import models
from stratuslab.errors import InvalidInput
from stratuslab.schemas.common import CursorPage
from stratuslab.schemas.hosts import MigrateRequest
from stratuslab.schemas.images import ImageSave
from stratuslab.schemas.instances import (
    ConsoleOutput,
    Instance,
    InstanceAction,
    InstanceCreate,
    InstanceCreated,
)
from stratuslab.schemas.operations import Operation
from stratuslab.services import images, instances, mobility, nics
from stratuslab.services.agent import read_console

router = APIRouter(prefix="/instances", tags=["instances"])

#: user-mode networking forwards guest SSH to this address on the instance's host
FORWARD_ADDRESS = "127.0.0.1"


class HostNames:
    """Host names by id, kept for a minute (a host's name is set when it joins): an
    instance on the wire names its host without a query per request."""

    def __init__(self, ttl: float = 60.0, size: int = 100_000) -> None:
        self.ttl = ttl
        self.size = size
        self._names: dict[str, tuple[float, str]] = {}

    def lookup(self, session: Session, host_ids: set[str]) -> dict[str, str]:
        now = time.monotonic()
        out: dict[str, str] = {}
        missing = []
        for host_id in host_ids:
            hit = self._names.get(host_id)
            if hit is not None and now - hit[0] < self.ttl:
                out[host_id] = hit[1]
            else:
                missing.append(host_id)
        if missing:
            stmt = select(models.Host.id, models.Host.name).where(models.Host.id.in_(missing))
            found = {row.id: row.name for row in session.execute(stmt)}
            if len(self._names) + len(found) > self.size:
                self._names.clear()
            self._names.update({k: (now, v) for k, v in found.items()})
            out.update(found)
        return out


_host_names = HostNames()


def to_wire(session: Session, rows: Iterable[models.Instance]) -> list[Instance]:
    rows = list(rows)
    names = _host_names.lookup(session, {r.host_id for r in rows if r.host_id})
    out = []
    for r in rows:
        item = Instance.model_validate(r)
        item.host_name = names.get(r.host_id or "")
        item.context_method = str(r.spec.get("context_method") or "nocloud")
        if r.ssh_port is not None:
            item.address = f"{FORWARD_ADDRESS}:{r.ssh_port}"
        out.append(item)
    nics.decorate(session, out, rows)
    return out


def encode_cursor(row: models.Instance) -> str:
    """The opaque key of the page after ``row`` (its creation time and id)."""
    key = f"{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, row_id = text.partition("|")
        when = datetime.fromisoformat(stamp)
    except ValueError as exc:
        raise InvalidInput(
            "the cursor is not one this server gave out",
            hint="pass the next_cursor of the previous page unchanged, or leave it out",
            code="invalid_cursor",
        ) from exc
    if not row_id:
        raise InvalidInput(
            "the cursor is not one this server gave out",
            hint="pass the next_cursor of the previous page unchanged, or leave it out",
            code="invalid_cursor",
        )
    return (when if when.tzinfo else when.replace(tzinfo=UTC)), row_id


@router.get("")
def list_instances(
    principal: ReadingPrincipalDep,
    s: ReadsDep,
    status: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    cursor: str | None = Query(
        None, description="next_cursor of the previous page: the page after it (by key)"
    ),
    count: bool | None = Query(
        None, description="count the total (default: only for a request without a cursor)"
    ),
) -> CursorPage[Instance]:
    """Instances, oldest first. Follow ``next_cursor`` to page through them: a deep page
    costs what the first one does (``offset`` still works, but walks every row before it)."""
    after = decode_cursor(cursor) if cursor else None
    rows, total = instances.list_instances(
        s,
        principal,
        status=status,
        limit=limit,
        offset=offset,
        after=after,
        count=count if count is not None else after is None,
    )
    return CursorPage[Instance](
        items=to_wire(s, rows),
        total=total,
        limit=limit,
        offset=offset,
        next_cursor=encode_cursor(rows[-1]) if len(rows) == limit else None,
    )


@router.post("", status_code=202)
def create_instances(body: InstanceCreate, ctx: CtxDep, principal: PrincipalDep) -> InstanceCreated:
    uow = ctx.uow()
    with uow as s:
        op, rows = instances.create_instances(uow, principal, body)
        return InstanceCreated(operation=Operation.model_validate(op), instances=to_wire(s, rows))


@router.get("/{ref}")
def get_instance(ref: str, principal: ReadingPrincipalDep, s: ReadsDep) -> Instance:
    return to_wire(s, [instances.get_instance(s, principal, ref)])[0]


@router.post("/{ref}/actions", status_code=202)
def instance_action(
    ref: str, body: InstanceAction, ctx: CtxDep, principal: PrincipalDep
) -> Operation:
    uow = ctx.uow()
    with uow:
        op = instances.act(uow, principal, ref, body.action, hard=body.hard)
        return Operation.model_validate(op)


@router.delete("/{ref}", status_code=202)
def delete_instance(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Operation:
    uow = ctx.uow()
    with uow:
        op = instances.delete(uow, principal, ref)
        return Operation.model_validate(op)


@router.get("/{ref}/console")
def console(
    ref: str, ctx: CtxDep, principal: PrincipalDep, offset: int = Query(0, ge=0)
) -> ConsoleOutput:
    with ctx.sessions() as s:
        inst = instances.get_instance(s, principal, ref)
    next_offset, data = read_console(ctx.console_dir, inst.id, offset)
    return ConsoleOutput(instance_id=inst.id, offset=offset, next_offset=next_offset, data=data)


@router.post("/{ref}/save", status_code=202)
def save_instance(ref: str, body: ImageSave, ctx: CtxDep, principal: PrincipalDep) -> Operation:
    """Save a stopped instance's root disk as a new image (with draft marketplace metadata)."""
    uow = ctx.uow()
    with uow as s:
        inst = instances.get_instance(s, principal, ref)
        op = images.start_save(uow, principal, inst, body.name)
        return Operation.model_validate(op)


@router.post("/{ref}/migrate", status_code=202)
def migrate_instance(
    ref: str, body: MigrateRequest, ctx: CtxDep, principal: PrincipalDep
) -> Operation:
    """Migrate an instance to another host: cold (stop it, move its root disk, start it
    there) or live (it keeps running)."""
    uow = ctx.uow()
    with uow as s:
        inst = instances.get_instance(s, principal, ref)
        op = mobility.migrate(uow, principal, inst, body.host, live=body.live)
        return Operation.model_validate(op)
