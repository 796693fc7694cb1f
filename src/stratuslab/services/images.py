"""Local image registration: a qcow2 or raw file with its sha256."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Image, Instance, Operation
from stratuslab.errors import Conflict, Forbidden, ImageError, InvalidInput, NotFound, StratusError
from stratuslab.identity.authz import Action
from stratuslab.marketplace.metadata import build_metadata
from stratuslab.services import access, events, operations, quotas
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork
from stratuslab.services.image_files import inspect_disk_image
from stratuslab.types import ImageFormat, ImageStatus, InstanceStatus

IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str) -> None:
    if not IMAGE_NAME.match(name):
        raise InvalidInput(
            f"invalid image name {name!r}",
            hint="use letters, digits, '.', '_' and '-' (up to 128 characters)",
        )


def visible(principal: Principal) -> ColumnElement[bool]:
    """SQL condition: images this principal may see (services/access.py)."""
    return access.images_visible(principal)


def list_images(session: Session, principal: Principal) -> list[Image]:
    stmt = select(Image).where(visible(principal)).order_by(Image.created_at)
    return list(session.scalars(stmt))


def get_image(
    session: Session, principal: Principal, ref: str, *, action: Action = Action.READ
) -> Image:
    """An image by id or name (the acting project's first, then others you can see)."""
    return access.find_image(session, principal, ref, action)


def check_name_free(session: Session, principal: Principal, name: str) -> None:
    """May a new image called ``name`` be created in the acting project? The name must be
    valid and free, and the project's (and user's) image quota must allow one more. In the
    creating transaction this also takes the quota lock (services/quotas.py)."""
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
    quotas.check_create(session, principal, quotas.IMAGE_REQUEST)


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
    image = get_image(session, principal, ref, action=Action.DELETE)
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


def start_save(uow: UnitOfWork, principal: Principal, inst: Instance, name: str) -> Operation:
    """Ask the instance's host to save its (stopped) root disk as a new image."""
    s = uow.session
    if inst.status != InstanceStatus.STOPPED.value or inst.desired != "stopped":
        raise Conflict(
            f"instance {inst.name} is {inst.status}; only a stopped instance can be saved",
            hint=f"stop it first: `stratus stop {inst.name}`",
            code="not_stopped",
        )
    if inst.spec.get("save"):
        raise Conflict(
            f"instance {inst.name} is already being saved",
            hint="wait for the running save to finish (`stratus events`)",
        )
    check_name_free(s, principal, name)
    image = new_saving_image(s, inst, name, principal.user_id, principal.project_id)
    inst.spec = {**inst.spec, "save": {"image_id": image.id}}
    inst.generation += 1
    if inst.host_id is not None:
        host = s.get(Host, inst.host_id)
        if host is not None:
            host.bump()
        uow.notify(f"host:{inst.host_id}")
    events.record(
        s,
        "image.saving",
        f"saving the root disk as image {name}",
        instance_id=inst.id,
        project_id=inst.project_id,
    )
    op = Operation(
        kind="image.save",
        target_type="image",
        target_ids=[image.id],
        expect={"status": ImageStatus.AVAILABLE.value},
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    s.add(op)
    s.flush()
    return op


def new_saving_image(
    session: Session, inst: Instance, name: str, owner_id: str, project_id: str
) -> Image:
    """The image row an instance's root disk is being saved into (by its host)."""
    image = Image(
        name=name,
        format=ImageFormat.QCOW2.value,
        sha256="",
        status=ImageStatus.SAVING.value,
        path="",
        source_instance_id=inst.id,
        owner_id=owner_id,
        project_id=project_id,
    )
    session.add(image)
    session.flush()
    return image


def saving_image(session: Session, host_id: str, image_id: str) -> tuple[Image, Instance]:
    """The image being saved from an instance of this host (anything else is refused)."""
    image = session.get(Image, image_id)
    inst = session.get(Instance, image.source_instance_id) if image is not None else None
    if image is None or inst is None or image.status != ImageStatus.SAVING.value:
        raise NotFound(f"no image {image_id} is being saved", hint="it may have been cancelled")
    if inst.host_id != host_id:
        raise Forbidden(f"image {image_id} is not saved from this host", hint="check the host")
    return image, inst


def finish_save(
    session: Session,
    image: Image,
    inst: Instance,
    *,
    upload: Path | None,
    sha256: str,
    images_dir: Path,
    reason: str = "",
) -> list[str]:
    """Register the uploaded root disk, or record why saving failed; finish the operations."""
    error: dict[str, Any] | None = None
    try:
        if upload is None:
            raise ImageError(reason or "the node could not save the disk", hint="see events")
        info = inspect_disk_image(upload, display_name=image.name)
        final = images_dir / f"{image.id}.{info.format}"
        os.replace(upload, final)
        image.path, image.format, image.sha256 = str(final), info.format, sha256
        image.size_bytes, image.virtual_size_bytes = info.actual_size, info.virtual_size
        image.status = ImageStatus.AVAILABLE.value
        image.metadata_draft = draft_metadata(final, image, inst)
        events.record(
            session,
            "image.saved",
            f"image {image.name} saved ({sha256[:12]})",
            instance_id=inst.id,
            project_id=inst.project_id,
        )
    except StratusError as exc:
        image.status, image.status_reason = ImageStatus.ERROR.value, exc.message
        error = {**exc.to_dict(), "message": f"saving image {image.name} failed: {exc.message}"}
        events.record(
            session,
            "image.save_failed",
            exc.message,
            level="error",
            instance_id=inst.id,
            project_id=inst.project_id,
        )
    finally:
        if upload is not None:
            upload.unlink(missing_ok=True)
    inst.spec = {k: v for k, v in inst.spec.items() if k != "save"}
    return operations.finish_for_target(session, image.id, error)


def draft_metadata(path: Path, image: Image, inst: Instance) -> dict[str, Any]:
    """Unsigned marketplace metadata for a saved image: its owner signs and publishes it."""
    meta = build_metadata(
        path,
        format=image.format,
        title=image.name,
        description=f"saved from instance {inst.name} ({inst.id})",
        is_version_of=None,
    )
    return dict(meta.model_dump(mode="json", exclude_none=True))
