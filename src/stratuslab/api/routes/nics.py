"""``/instances/{ref}/nics`` and ``/instances/{ref}/port-forwards``: NIC hot attach and
detach, and port address translation."""

from __future__ import annotations

from fastapi import APIRouter, Response

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.schemas.networks import Nic, NicCreate, PortForward, PortForwardCreate
from stratuslab.schemas.operations import Operation
from stratuslab.services import networks, nics
from stratuslab.services.instances import get_instance

router = APIRouter(prefix="/instances/{ref}", tags=["instances"])


@router.get("/nics")
def list_nics(ref: str, ctx: CtxDep, principal: PrincipalDep) -> list[Nic]:
    with ctx.sessions() as s:
        inst = get_instance(s, principal, ref)
        return nics.nic_wire(s, networks.nics_of(s, [inst.id]).get(inst.id, []))


@router.post("/nics", status_code=202)
def attach_nic(ref: str, body: NicCreate, ctx: CtxDep, principal: PrincipalDep) -> Operation:
    """Attach a NIC (live when the instance runs); the operation ends when the host did it."""
    uow = ctx.uow()
    with uow:
        op, _nic = nics.attach_nic(uow, principal, ref, body)
        return Operation.model_validate(op)


@router.delete("/nics/{nic}", status_code=202)
def detach_nic(ref: str, nic: str, ctx: CtxDep, principal: PrincipalDep) -> Operation:
    """Detach a NIC (by index, MAC or network name); its lease ends now."""
    uow = ctx.uow()
    with uow:
        return Operation.model_validate(nics.detach_nic(uow, principal, ref, nic))


@router.get("/port-forwards")
def list_forwards(ref: str, ctx: CtxDep, principal: PrincipalDep) -> list[PortForward]:
    with ctx.sessions() as s:
        inst = get_instance(s, principal, ref)
        return nics.forward_wire(s, nics.forwards_of(s, [inst.id]).get(inst.id, []))


@router.post("/port-forwards", status_code=201)
def add_forward(
    ref: str, body: PortForwardCreate, ctx: CtxDep, principal: PrincipalDep
) -> PortForward:
    """Forward a port of the instance's host to a port of the instance (PAT)."""
    uow = ctx.uow()
    with uow as s:
        return nics.forward_wire(s, [nics.add_forward(uow, principal, ref, body)])[0]


@router.delete("/port-forwards/{forward}", status_code=204)
def remove_forward(ref: str, forward: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    """Stop a port forward (by id or host port)."""
    uow = ctx.uow()
    with uow:
        nics.remove_forward(uow, principal, ref, forward)
    return Response(status_code=204)
