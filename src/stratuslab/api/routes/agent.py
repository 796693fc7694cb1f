"""Routes the node agents call (with their per-host credential)."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select

from stratuslab.api import group_commit
from stratuslab.api.deps import CtxDep, HostDep
from stratuslab.api.uploads import receive_upload
from stratuslab.db import models
from stratuslab.db.session import read_session
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
from stratuslab.services.auth import unknown_host
from stratuslab.services.context import Ctx, UnitOfWork, wait_event
from stratuslab.services.instances import host_key

router = APIRouter(prefix="/agent", tags=["agent"])
T = TypeVar("T")

#: a waiting long-poll re-reads its host's generation this often (seconds, plus up to a
#: quarter more at random) when no ``host_watch`` task does it for every host. In one
#: controller process the notifier wakes it at once; this only bounds how late a change
#: made by another controller process is seen.
RECHECK_INTERVAL = 20.0


@router.post("/join", status_code=201)
def join(body: JoinRequest, ctx: CtxDep) -> JoinResponse:
    with ctx.uow() as s:
        host, credential = hosts.join(s, body)
        return JoinResponse(host_id=host.id, credential=credential)


def _write(request: Request, ctx: Ctx, work: Callable[[UnitOfWork], T]) -> Awaitable[T]:
    """An agent's small write transaction (grouped with others on SQLite)."""
    return group_commit.write(request.app, ctx, work)


def _host_row(uow: UnitOfWork, host_id: str) -> models.Host:
    row = uow.session.get(models.Host, host_id)
    if row is None:  # removed since its credential was last checked
        raise unknown_host()
    return row


@router.post("/heartbeat", status_code=204)
async def heartbeat(body: Heartbeat, request: Request, ctx: CtxDep, host: HostDep) -> None:
    def work(uow: UnitOfWork) -> None:
        hosts.heartbeat(uow.session, _host_row(uow, host.id), body)

    await _write(request, ctx, work)


def _desired_if_changed(
    ctx: Ctx, host_id: str, since: int | None, *, timed_out: bool = False
) -> DesiredState | None:
    """The host's desired state, or None when its generation is still ``since``; once the
    wait ``timed_out``, an ``unchanged`` answer instead of None (the state itself is read
    only when asked for with ``since=None``). The generation is read first: a state read
    after it is as new or newer."""
    with read_session(ctx.sessions) as s:
        generation = s.scalar(
            select(models.Host.desired_generation).where(models.Host.id == host_id)
        )
        if generation is None:
            raise unknown_host()
        if since is not None and generation == since:
            if timed_out:
                return DesiredState(
                    host_id=host_id, generation=generation, instances=[], unchanged=True
                )
            return None
        row = s.get(models.Host, host_id)
        assert row is not None
        return agent.desired_state(
            s, row, ctx.settings.stop_timeout, egress=ctx.settings.guest_egress
        )


@router.get("/desired")
async def desired(
    ctx: CtxDep,
    host: HostDep,
    since: int = Query(-1, description="return at once if the generation differs from this"),
    wait: float = Query(0, ge=0, description="seconds to wait for a change"),
    brief: bool = Query(
        False,
        description="the caller understands unchanged answers: when the wait ends with the "
        "generation still `since`, answer unchanged=true and no instances instead of the "
        "whole state",
    ),
) -> DesiredState:
    """The desired state of every instance on the calling host (long-poll with since+wait).

    Every change to what a host must run bumps its generation. An agent that asks
    ``brief=true`` and whose wait ends with the generation still ``since`` gets
    ``unchanged`` (one query instead of the whole state) and converges the state it has;
    it leaves ``brief`` out now and then to read everything again. Without ``brief`` (older
    agents) a wait that ends sends the whole state, as it always did."""
    deadline = time.monotonic() + min(wait, ctx.settings.max_wait)
    while True:
        with ctx.notifier.subscribe(host_key(host.id)) as changed:
            timed_out = deadline - time.monotonic() <= 0
            state = await run_in_threadpool(
                _desired_if_changed,
                ctx,
                host.id,
                since if brief or not timed_out else None,
                timed_out=timed_out,
            )
            if state is not None:
                return state
            left = deadline - time.monotonic()
            if not ctx.notifier.watching_hosts:
                left = min(left, RECHECK_INTERVAL * random.uniform(1.0, 1.25))
            await wait_event(changed, left)


@router.post("/report")
async def report(body: Report, request: Request, ctx: CtxDep, host: HostDep) -> ReportAck:
    def work(uow: UnitOfWork) -> tuple[ReportAck, list[str]]:
        row = _host_row(uow, host.id)
        return agent.apply_report(uow.session, row, body, ctx.console_dir)

    ack, finished = await _write(request, ctx, work)
    ctx.notifier.notify(*(operations.op_key(op) for op in finished))
    return ack


@router.get("/images/{image_id}", response_class=FileResponse)
def image_file(image_id: str, ctx: CtxDep, host: HostDep) -> FileResponse:
    with read_session(ctx.sessions) as s:
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
