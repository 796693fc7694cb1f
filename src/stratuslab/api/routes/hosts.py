from __future__ import annotations

from fastapi import APIRouter, Query

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.db import models
from stratuslab.schemas.hosts import Host, JoinTokenCreated
from stratuslab.services import hosts

router = APIRouter(prefix="/hosts", tags=["hosts"])


def _wire(row: models.Host, vcpus: int, memory: int, count: int) -> Host:
    item = Host.model_validate(row, from_attributes=True)
    item.vcpus_allocated, item.memory_allocated_mib, item.instances = vcpus, memory, count
    return item


@router.get("")
def list_hosts(ctx: CtxDep, _p: PrincipalDep) -> list[Host]:
    with ctx.sessions() as s:
        return [_wire(*row) for row in hosts.list_hosts(s)]


@router.get("/{ref}")
def get_host(ref: str, ctx: CtxDep, _p: PrincipalDep) -> Host:
    with ctx.sessions() as s:
        host = hosts.get_host(s, ref)
        row = next(r for r in hosts.list_hosts(s) if r[0].id == host.id)
        return _wire(*row)


@router.post("/tokens", status_code=201)
def create_join_token(
    ctx: CtxDep, principal: PrincipalDep, ttl: float = Query(3600, description="seconds")
) -> JoinTokenCreated:
    with ctx.uow() as s:
        secret, row = hosts.create_join_token(s, principal, ttl)
        return JoinTokenCreated(token=secret, expires_at=row.expires_at)
