from __future__ import annotations

import time

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.schemas.operations import Operation
from stratuslab.services import operations
from stratuslab.services.auth import Principal
from stratuslab.services.context import Ctx, wait_event
from stratuslab.types import OperationStatus

router = APIRouter(prefix="/operations", tags=["operations"])


def _read(ctx: Ctx, principal: Principal, op_id: str) -> Operation:
    with ctx.sessions() as s:
        return Operation.model_validate(operations.get(s, principal, op_id))


@router.get("/{op_id}")
async def get_operation(
    op_id: str,
    ctx: CtxDep,
    principal: PrincipalDep,
    wait: float = Query(0, ge=0, description="seconds to wait for the operation to finish"),
) -> Operation:
    deadline = time.monotonic() + min(wait, ctx.settings.max_wait)
    while True:
        with ctx.notifier.subscribe(operations.op_key(op_id)) as changed:
            op = await run_in_threadpool(_read, ctx, principal, op_id)
            remaining = deadline - time.monotonic()
            if op.status != OperationStatus.RUNNING.value or remaining <= 0:
                return op
            # Other controller replicas do not notify us: re-read at least every 2 s.
            await wait_event(changed, min(remaining, 2.0))
