from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.api.uploads import receive_upload
from stratuslab.errors import InvalidInput, NotFound
from stratuslab.schemas.images import Image
from stratuslab.services import images
from stratuslab.services.auth import Principal
from stratuslab.services.context import Ctx

router = APIRouter(prefix="/images", tags=["images"])


@router.get("")
def list_images(ctx: CtxDep, principal: PrincipalDep) -> list[Image]:
    with ctx.sessions() as s:
        return [Image.model_validate(i) for i in images.list_images(s, principal)]


@router.post(
    "",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        }
    },
)
async def upload_image(
    request: Request,
    ctx: CtxDep,
    principal: PrincipalDep,
    name: str = Query(description="name of the new image"),
) -> Image:
    """Register a qcow2 or raw disk image: the request body is the file itself."""
    with ctx.sessions() as s:
        images.check_name_free(s, principal, name)
    upload, sha256 = await receive_upload(request, ctx.images_dir)
    return await run_in_threadpool(_register, ctx, principal, name, upload, sha256)


def _register(ctx: Ctx, principal: Principal, name: str, upload: Path, sha256: str) -> Image:
    if upload.stat().st_size == 0:
        upload.unlink(missing_ok=True)
        raise InvalidInput("the upload is empty", hint="send the image file as the request body")
    with ctx.uow() as s:
        image = images.register_uploaded(
            s, principal, name=name, upload=upload, sha256=sha256, images_dir=ctx.images_dir
        )
        return Image.model_validate(image)


@router.get("/{ref}")
def get_image(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Image:
    with ctx.sessions() as s:
        return Image.model_validate(images.get_image(s, principal, ref))


@router.get("/{ref}/metadata")
def image_metadata(ref: str, ctx: CtxDep, principal: PrincipalDep) -> dict[str, Any]:
    """The unsigned marketplace metadata generated for a saved image (sign it to publish)."""
    with ctx.sessions() as s:
        image = images.get_image(s, principal, ref)
    if image.metadata_draft is None:
        raise NotFound(
            f"image {image.name} has no draft metadata",
            hint="only images saved from instances get one; build it with "
            "`stratus image build-metadata FILE`",
        )
    return dict(image.metadata_draft)


@router.get("/{ref}/file", response_class=FileResponse)
def download_image(ref: str, ctx: CtxDep, principal: PrincipalDep) -> FileResponse:
    with ctx.sessions() as s:
        image = images.get_image(s, principal, ref)
    return FileResponse(image.path, media_type="application/octet-stream")


@router.delete("/{ref}", status_code=204)
def delete_image(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    with ctx.uow() as s:
        path = images.delete_image(s, principal, ref)
    path.unlink(missing_ok=True)
    return Response(status_code=204)
