from __future__ import annotations

from fastapi import APIRouter, Query

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.schemas.events import Event
from stratuslab.services import events, instances

router = APIRouter(prefix="/events", tags=["events"])


@router.get("")
def list_events(
    ctx: CtxDep,
    principal: PrincipalDep,
    instance_id: str | None = None,
    after: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
) -> list[Event]:
    with ctx.sessions() as s:
        if instance_id is not None:
            instance_id = instances.get_instance(s, principal, instance_id).id
        project = None if principal.is_admin and instance_id is None else principal.project_id
        rows = events.list_events(
            s, project_id=project, instance_id=instance_id, after=after, limit=limit
        )
        return [Event.model_validate(r) for r in rows]
