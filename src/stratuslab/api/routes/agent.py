"""Routes the node agents call (with their per-host credential)."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select

from stratuslab.api.deps import CtxDep, HostDep
from stratuslab.api.uploads import receive_upload
from stratuslab.db import models
from stratuslab.errors import NotFound
from stratuslab.schemas.agent import (
    DesiredState,
    Heartbeat,
    JoinRequest,
    JoinResponse,
    Report,
    ReportAck,
)
from stratuslab.schemas.images import SaveFailure
from stratuslab.services import agent, hosts, images, operations
from stratuslab.services.context import Ctx, wait_event
from stratuslab.services.instances import host_key

router = APIRouter(prefix="/agent", tags=["agent"])


@router.post("/join", status_code=201)
def join(body: JoinRequest, ctx: CtxDep) -> JoinResponse:
    with ctx.uow() as s:
        host, credential = hosts.join(s, body)
        return JoinResponse(host_id=host.id, credential=credential)


@router.post("/heartbeat", status_code=204)
def heartbeat(body: Heartbeat, ctx: CtxDep, host: HostDep) -> None:
    with ctx.uow() as s:
        row = s.get(models.Host, host.id)
        assert row is not None
        hosts.heartbeat(s, row, body)


def _desired(ctx: Ctx, host_id: str) -> DesiredState:
    with ctx.sessions() as s:
        row = s.get(models.Host, host_id)
        assert row is not None
        return agent.desired_state(
            s, row, ctx.settings.stop_timeout, egress=ctx.settings.guest_egress
        )


def _generation(ctx: Ctx, host_id: str) -> int:
    with ctx.sessions() as s:
        return int(
            s.scalar(select(models.Host.desired_generation).where(models.Host.id == host_id)) or 0
        )


@router.get("/desired")
async def desired(
    ctx: CtxDep,
    host: HostDep,
    since: int = Query(-1, description="return at once if the generation differs from this"),
    wait: float = Query(0, ge=0, description="seconds to wait for a change"),
) -> DesiredState:
    """The desired state of every instance on the calling host (long-poll with since+wait)."""
    deadline = time.monotonic() + min(wait, ctx.settings.max_wait)
    while True:
        with ctx.notifier.subscribe(host_key(host.id)) as changed:
            generation = await run_in_threadpool(_generation, ctx, host.id)
            remaining = deadline - time.monotonic()
            if generation != since or remaining <= 0:
                return await run_in_threadpool(_desired, ctx, host.id)
            await wait_event(changed, min(remaining, 5.0))


@router.post("/report")
def report(body: Report, ctx: CtxDep, host: HostDep) -> ReportAck:
    with ctx.uow() as s:
        row = s.get(models.Host, host.id)
        assert row is not None
        ack, finished = agent.apply_report(s, row, body, ctx.console_dir)
    ctx.notifier.notify(*(operations.op_key(op) for op in finished))
    return ack


@router.get("/images/{image_id}", response_class=FileResponse)
def image_file(image_id: str, ctx: CtxDep, host: HostDep) -> FileResponse:
    with ctx.sessions() as s:
        image = s.get(models.Image, image_id)
        if image is None or not image.path:
            raise NotFound(f"image {image_id} does not exist", hint="it may have been deleted")
    return FileResponse(image.path, media_type="application/octet-stream")


@router.put("/images/{image_id}/file", status_code=204)
async def upload_saved_image(image_id: str, request: Request, ctx: CtxDep, host: HostDep) -> None:
    """The node sends the flattened root disk of an instance being saved."""
    with ctx.sessions() as s:
        images.saving_image(s, host.id, image_id)
    upload, sha256 = await receive_upload(request, ctx.images_dir)
    await run_in_threadpool(_finish_save, ctx, host.id, image_id, upload, sha256, "")


@router.post("/images/{image_id}/failure", status_code=204)
def saved_image_failed(image_id: str, body: SaveFailure, ctx: CtxDep, host: HostDep) -> None:
    _finish_save(ctx, host.id, image_id, None, "", body.reason)


def _finish_save(
    ctx: Ctx, host_id: str, image_id: str, upload: Path | None, sha256: str, reason: str
) -> None:
    with ctx.uow() as s:
        image, inst = images.saving_image(s, host_id, image_id)
        finished = images.finish_save(
            s,
            image,
            inst,
            upload=upload,
            sha256=sha256,
            images_dir=ctx.images_dir,
            reason=reason,
        )
    ctx.notifier.notify(*(operations.op_key(op) for op in finished))
