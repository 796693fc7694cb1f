"""Local image registration: a qcow2 or raw file with its sha256."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from stratuslab.db.models import Image, Instance
from stratuslab.errors import Conflict, InvalidInput, NotFound
from stratuslab.services.auth import Principal
from stratuslab.services.image_files import inspect_disk_image
from stratuslab.types import ImageStatus

IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str) -> None:
    if not IMAGE_NAME.match(name):
        raise InvalidInput(
            f"invalid image name {name!r}",
            hint="use letters, digits, '.', '_' and '-' (up to 128 characters)",
        )


def visible(principal: Principal) -> ColumnElement[bool]:
    """SQL condition: images this principal may use."""
    return and_(
        Image.status != ImageStatus.DELETED.value,
        or_(Image.project_id == principal.project_id, Image.visibility == "public"),
    )


def list_images(session: Session, principal: Principal) -> list[Image]:
    stmt = select(Image).where(visible(principal)).order_by(Image.created_at)
    return list(session.scalars(stmt))


def get_image(session: Session, principal: Principal, ref: str) -> Image:
    image = session.scalar(select(Image).where(Image.id == ref, visible(principal)))
    if image is None:
        image = session.scalar(
            select(Image)
            .where(Image.name == ref, visible(principal))
            .order_by(Image.project_id != principal.project_id)
            .limit(1)
        )
    if image is None:
        raise NotFound(
            f"image {ref!r} does not exist",
            hint="list images with `stratus image list`, or add one with "
            "`stratus image add FILE --name NAME`",
            code="image_not_found",
        )
    return image


def check_name_free(session: Session, principal: Principal, name: str) -> None:
    validate_name(name)
    taken = session.scalar(
        select(Image.id).where(Image.project_id == principal.project_id, Image.name == name)
    )
    if taken is not None:
        raise Conflict(
            f"an image named {name!r} already exists ({taken})",
            hint="choose another --name, or delete the old image first",
            code="duplicate_name",
        )


def register_uploaded(
    session: Session,
    principal: Principal,
    *,
    name: str,
    upload: Path,
    sha256: str,
    images_dir: Path,
) -> Image:
    """Turn a fully received upload into an image row and its stored file.

    The upload is removed on any failure, so nothing half-made remains.
    """
    try:
        check_name_free(session, principal, name)
        info = inspect_disk_image(upload, display_name=name)
        image = Image(
            name=name,
            format=info.format,
            size_bytes=info.actual_size,
            virtual_size_bytes=info.virtual_size,
            sha256=sha256,
            status=ImageStatus.AVAILABLE.value,
            path="",
            owner_id=principal.user_id,
            project_id=principal.project_id,
        )
        session.add(image)
        session.flush()
        final = images_dir / f"{image.id}.{info.format}"
        os.replace(upload, final)
        image.path = str(final)
        return image
    finally:
        upload.unlink(missing_ok=True)


def delete_image(session: Session, principal: Principal, ref: str) -> Path:
    image = get_image(session, principal, ref)
    if image.project_id != principal.project_id and not principal.is_admin:
        raise NotFound(f"image {ref!r} does not exist", hint="`stratus image list`")
    user = session.scalar(
        select(Instance.id).where(Instance.image_id == image.id, Instance.status != "deleted")
    )
    if user is not None:
        raise Conflict(
            f"image {image.name!r} is used by instance {user}",
            hint="delete the instances started from it first (`stratus kill ID`)",
        )
    path = Path(image.path)
    # Rows stay for accounting (instances keep pointing at them); the name is freed.
    image.status = ImageStatus.DELETED.value
    image.name = f"{image.name}~deleted~{image.id[:8]}"[:128]
    image.path = ""
    return path
