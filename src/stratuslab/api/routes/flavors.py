from __future__ import annotations

from fastapi import APIRouter, Response

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.schemas.flavors import Flavor, FlavorCreate
from stratuslab.services import flavors

router = APIRouter(prefix="/flavors", tags=["flavors"])


@router.get("")
def list_flavors(ctx: CtxDep, _p: PrincipalDep) -> list[Flavor]:
    with ctx.sessions() as s:
        return [Flavor.model_validate(f) for f in flavors.list_flavors(s)]


@router.post("", status_code=201)
def create_flavor(body: FlavorCreate, ctx: CtxDep, principal: PrincipalDep) -> Flavor:
    with ctx.uow() as s:
        flavor = flavors.create_flavor(s, principal, **body.model_dump())
        return Flavor.model_validate(flavor)


@router.delete("/{name}", status_code=204)
def delete_flavor(name: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    with ctx.uow() as s:
        flavors.delete_flavor(s, principal, name)
    return Response(status_code=204)
