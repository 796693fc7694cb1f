from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.db import models
from stratuslab.schemas.hosts import Host, HostStateChange, HostUpdate, JoinTokenCreated
from stratuslab.services import hosts

router = APIRouter(prefix="/hosts", tags=["hosts"])


def _wire(row: models.Host, vcpus: int, memory: int, count: int, disk: int) -> Host:
    item = Host.model_validate(row, from_attributes=True)
    item.vcpus_allocated, item.memory_allocated_mib, item.instances = vcpus, memory, count
    item.disk_allocated_gib = disk
    return item


def _one(s: Session, host_id: str) -> Host:
    row = next(r for r in hosts.list_hosts(s) if r[0].id == host_id)
    return _wire(*row)


@router.get("")
def list_hosts(ctx: CtxDep, _p: PrincipalDep) -> list[Host]:
    with ctx.sessions() as s:
        return [_wire(*row) for row in hosts.list_hosts(s)]


@router.get("/{ref}")
def get_host(ref: str, ctx: CtxDep, _p: PrincipalDep) -> Host:
    with ctx.sessions() as s:
        return _one(s, hosts.get_host(s, ref).id)


@router.post("/{ref}/state")
def change_state(ref: str, body: HostStateChange, ctx: CtxDep, principal: PrincipalDep) -> Host:
    """enable, disable (no new placements) or drain (instances are moved away) a host."""
    with ctx.uow() as s:
        host = hosts.set_admin_state(s, principal, ref, body.action, body.reason)
        s.flush()
        return _one(s, host.id)


@router.patch("/{ref}")
def update_host(ref: str, body: HostUpdate, ctx: CtxDep, principal: PrincipalDep) -> Host:
    """Set or remove labels; set or reset overcommit ratios."""
    ratios: dict[str, float | None] = {
        name: getattr(body, name)
        for name in ("cpu_ratio", "ram_ratio", "disk_ratio")
        if getattr(body, name) is not None
    }
    ratios.update(dict.fromkeys(body.reset_ratios))
    with ctx.uow() as s:
        host = hosts.update_host(s, principal, ref, labels=body.labels, ratios=ratios)
        s.flush()
        return _one(s, host.id)


@router.delete("/{ref}", status_code=204)
def remove_host(ref: str, ctx: CtxDep, principal: PrincipalDep) -> None:
    """Forget an empty host; its credential stops working."""
    with ctx.uow() as s:
        hosts.remove_host(s, principal, ref)


@router.post("/tokens", status_code=201)
def create_join_token(
    ctx: CtxDep, principal: PrincipalDep, ttl: float = Query(3600, description="seconds")
) -> JoinTokenCreated:
    with ctx.uow() as s:
        secret, row = hosts.create_join_token(s, principal, ttl)
        return JoinTokenCreated(token=secret, expires_at=row.expires_at)
