from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.db import models
from stratuslab.schemas.common import Page
from stratuslab.schemas.images import ImageSave
from stratuslab.schemas.instances import (
    ConsoleOutput,
    Instance,
    InstanceAction,
    InstanceCreate,
    InstanceCreated,
)
from stratuslab.schemas.operations import Operation
from stratuslab.services import images, instances, nics
from stratuslab.services.agent import read_console

router = APIRouter(prefix="/instances", tags=["instances"])

#: user-mode networking forwards guest SSH to this address on the instance's host
FORWARD_ADDRESS = "127.0.0.1"


def to_wire(session: Session, rows: Iterable[models.Instance]) -> list[Instance]:
    rows = list(rows)
    host_ids = {r.host_id for r in rows if r.host_id}
    names: dict[str, str] = {}
    if host_ids:
        stmt = select(models.Host.id, models.Host.name).where(models.Host.id.in_(host_ids))
        names = {row.id: row.name for row in session.execute(stmt)}
    out = []
    for r in rows:
        item = Instance.model_validate(r)
        item.host_name = names.get(r.host_id or "")
        item.context_method = str(r.spec.get("context_method") or "nocloud")
        if r.ssh_port is not None:
            item.address = f"{FORWARD_ADDRESS}:{r.ssh_port}"
        out.append(item)
    nics.decorate(session, out)
    return out


@router.get("")
def list_instances(
    ctx: CtxDep,
    principal: PrincipalDep,
    status: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> Page[Instance]:
    with ctx.sessions() as s:
        rows, total = instances.list_instances(
            s, principal, status=status, limit=limit, offset=offset
        )
        return Page[Instance](items=to_wire(s, rows), total=total, limit=limit, offset=offset)


@router.post("", status_code=202)
def create_instances(body: InstanceCreate, ctx: CtxDep, principal: PrincipalDep) -> InstanceCreated:
    uow = ctx.uow()
    with uow as s:
        op, rows = instances.create_instances(uow, principal, body)
        return InstanceCreated(operation=Operation.model_validate(op), instances=to_wire(s, rows))


@router.get("/{ref}")
def get_instance(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Instance:
    with ctx.sessions() as s:
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
