"""Wire types of persistent volumes (docs/volumes.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from stratuslab.schemas.common import Wire, WireIn
from stratuslab.schemas.operations import Operation

VOLUME_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Visibility = Literal["private", "project", "public"]


class VolumeCreate(WireIn):
    name: str = Field(pattern=VOLUME_NAME, description="name (a tag; need not be unique)")
    size_gib: float | None = Field(
        default=None, description="size in GiB (at least the image's size with --image)"
    )
    size_bytes: int | None = Field(default=None, description="size in bytes (instead of GiB)")
    image: str | None = Field(
        default=None, description="make a bootable volume holding this image (id or name)"
    )
    instance: str | None = Field(
        default=None,
        description="make a bootable volume holding the root disk of this stopped instance "
        "(id or name), in the volume pool of its host",
    )
    visibility: Visibility = "private"


class VolumeUpdate(WireIn):
    name: str | None = Field(default=None, pattern=VOLUME_NAME)
    visibility: Visibility | None = None


class VolumeCopy(WireIn):
    """A snapshot (read-only) or clone (writable) of a volume."""

    name: str = Field(pattern=VOLUME_NAME)


class VolumeGrow(WireIn):
    size_gib: float | None = None
    size_bytes: int | None = None


class VolumeAttach(WireIn):
    instance: str = Field(min_length=1, description="instance id or name")


class VolumeDetach(WireIn):
    instance: str | None = Field(
        default=None, description="instance to detach from (needed for a shared snapshot)"
    )


class Attachment(Wire):
    instance_id: str
    instance_name: str = ""
    index: int
    target: str
    readonly: bool
    state: str


class Volume(Wire):
    id: str
    name: str
    size_bytes: int
    kind: str
    visibility: str
    state: str
    status_reason: str
    readonly: bool
    parent_id: str | None
    image_id: str | None
    instance_id: str | None
    host_id: str | None
    owner_id: str
    project_id: str
    created_at: datetime
    updated_at: datetime
    quarantine_until: datetime | None = None
    attachments: list[Attachment] = Field(default_factory=list)


class VolumeAccepted(Wire):
    """A change the node carries out: the volume as it is now and the operation to wait on."""

    volume: Volume
    operation: Operation
