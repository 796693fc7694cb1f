"""``/networks``: virtual networks and their lease history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.db import models
from stratuslab.schemas.networks import Lease, Network, NetworkCreate
from stratuslab.services import networks

router = APIRouter(prefix="/networks", tags=["networks"])


def to_wire(session: Session, rows: Sequence[models.Network]) -> list[Network]:
    leased = networks.leased_counts(session, [row.id for row in rows])
    out = []
    for row in rows:
        item = Network.model_validate(row)
        item.capacity = networks.definition_of(row).capacity
        item.leased = leased.get(row.id, 0)
        out.append(item)
    return out


@router.get("")
def list_networks(ctx: CtxDep, principal: PrincipalDep) -> list[Network]:
    with ctx.sessions() as s:
        return to_wire(s, networks.list_networks(s, principal))


@router.post("", status_code=201)
def create_network(body: NetworkCreate, ctx: CtxDep, principal: PrincipalDep) -> Network:
    uow = ctx.uow()
    with uow as s:
        return to_wire(s, [networks.create_network(uow, principal, body)])[0]


@router.get("/{ref}")
def get_network(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Network:
    with ctx.sessions() as s:
        return to_wire(s, [networks.get_network(s, principal, ref)])[0]


@router.delete("/{ref}", status_code=204)
def delete_network(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    uow = ctx.uow()
    with uow:
        networks.delete_network(uow, principal, ref)
    return Response(status_code=204)


@router.get("/{ref}/leases")
def network_leases(
    ref: str,
    ctx: CtxDep,
    principal: PrincipalDep,
    address: str | None = Query(None, description="only leases of this IPv4 or IPv6 address"),
    at: datetime | None = Query(None, description="only leases held at this time"),
    active: bool = Query(False, description="only leases held now"),
) -> list[Lease]:
    """Who held which address when: the lease history, kept forever, oldest first."""
    with ctx.sessions() as s:
        rows = networks.network_leases(s, principal, ref, address=address, at=at, active=active)
        return [
            Lease(
                network=r.network_name,
                instance_id=r.instance_id,
                instance_name=r.instance_name,
                project_id=r.project_id,
                mac=r.mac,
                ipv4=r.ipv4,
                ipv6=r.ipv6,
                since=r.since,
                until=r.until,
            )
            for r in rows
        ]
