"""Persistent volumes (docs/volumes.md) and the quarantine of deleted data (cloud admins)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.db import models
from stratuslab.schemas.operations import Operation
from stratuslab.schemas.volumes import (
    Volume,
    VolumeAccepted,
    VolumeAttach,
    VolumeCopy,
    VolumeCreate,
    VolumeDetach,
    VolumeGrow,
    VolumeUpdate,
)
from stratuslab.services import quarantine, volumes

router = APIRouter(prefix="/volumes", tags=["volumes"])


# -- quarantine (declared before /{ref} so "quarantine" is not taken for a volume) ----------


@router.get("/quarantine")
def list_quarantine(ctx: CtxDep, principal: PrincipalDep) -> list[Volume]:
    """Deleted volumes and deleted instances' disks kept until their quarantine ends."""
    with ctx.sessions() as s:
        return volumes.to_wire(s, quarantine.list_quarantined(s, principal))


@router.post("/quarantine/{volume_id}/release")
def release_quarantined(volume_id: str, ctx: CtxDep, principal: PrincipalDep) -> Volume:
    """Give a quarantined volume back to its owner (a root disk comes back bootable)."""
    uow = ctx.uow()
    with uow as s:
        return volumes.to_wire(s, [quarantine.release(uow, principal, volume_id)])[0]


@router.delete("/quarantine/{volume_id}", status_code=202)
def purge_quarantined(volume_id: str, ctx: CtxDep, principal: PrincipalDep) -> Operation:
    """Wipe a quarantined volume now."""
    uow = ctx.uow()
    with uow:
        return Operation.model_validate(quarantine.purge(uow, principal, volume_id))


# -- volumes --------------------------------------------------------------------------------


@router.get("")
def list_volumes(ctx: CtxDep, principal: PrincipalDep) -> list[Volume]:
    with ctx.sessions() as s:
        return volumes.to_wire(s, volumes.list_volumes(s, principal))


@router.post("", status_code=202)
def create_volume(body: VolumeCreate, ctx: CtxDep, principal: PrincipalDep) -> VolumeAccepted:
    """A blank volume, or a bootable one holding an image, in the pool with most room."""
    uow = ctx.uow()
    with uow as s:
        vol, op = volumes.create_volume(uow, principal, body)
        return _accepted(s, vol, op)


@router.get("/{ref}")
def get_volume(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Volume:
    with ctx.sessions() as s:
        return volumes.to_wire(s, [volumes.get_volume(s, principal, ref)])[0]


@router.patch("/{ref}")
def update_volume(ref: str, body: VolumeUpdate, ctx: CtxDep, principal: PrincipalDep) -> Volume:
    with ctx.uow() as s:
        vol = volumes.update(s, principal, ref, name=body.name, visibility=body.visibility)
        return volumes.to_wire(s, [vol])[0]


@router.delete("/{ref}")
def delete_volume(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Volume:
    """Delete a detached volume: it goes to quarantine, and is wiped when that ends."""
    uow = ctx.uow()
    with uow as s:
        return volumes.to_wire(s, [quarantine.delete_volume(uow, principal, ref)])[0]


@router.post("/{ref}/attach", status_code=202)
def attach_volume(ref: str, body: VolumeAttach, ctx: CtxDep, principal: PrincipalDep) -> Operation:
    """Hot-plug the volume into a running instance."""
    uow = ctx.uow()
    with uow:
        return Operation.model_validate(volumes.attach(uow, principal, ref, body.instance))


@router.post("/{ref}/detach", status_code=202)
def detach_volume(ref: str, body: VolumeDetach, ctx: CtxDep, principal: PrincipalDep) -> Operation:
    uow = ctx.uow()
    with uow:
        return Operation.model_validate(volumes.detach(uow, principal, ref, body.instance))


@router.post("/{ref}/snapshot", status_code=202)
def snapshot_volume(
    ref: str, body: VolumeCopy, ctx: CtxDep, principal: PrincipalDep
) -> VolumeAccepted:
    """A read-only point-in-time copy."""
    uow = ctx.uow()
    with uow as s:
        vol, op = volumes.copy_volume(uow, principal, ref, body.name, snapshot=True)
        return _accepted(s, vol, op)


@router.post("/{ref}/clone", status_code=202)
def clone_volume(
    ref: str, body: VolumeCopy, ctx: CtxDep, principal: PrincipalDep
) -> VolumeAccepted:
    """A writable point-in-time copy (copy-on-write where the pool can)."""
    uow = ctx.uow()
    with uow as s:
        vol, op = volumes.copy_volume(uow, principal, ref, body.name, snapshot=False)
        return _accepted(s, vol, op)


@router.post("/{ref}/grow", status_code=202)
def grow_volume(ref: str, body: VolumeGrow, ctx: CtxDep, principal: PrincipalDep) -> Operation:
    size = volumes.size_from(body.size_gib, body.size_bytes)
    uow = ctx.uow()
    with uow:
        return Operation.model_validate(volumes.grow(uow, principal, ref, size))


def _accepted(session: Session, vol: models.Volume, op: models.Operation) -> VolumeAccepted:
    return VolumeAccepted(
        volume=volumes.to_wire(session, [vol])[0], operation=Operation.model_validate(op)
    )
