from __future__ import annotations

from datetime import datetime

from pydantic import Field

from stratuslab.schemas.common import Wire, WireIn


class Image(Wire):
    id: str
    name: str
    format: str
    size_bytes: int
    virtual_size_bytes: int
    sha256: str
    status: str
    status_reason: str = ""
    source_instance_id: str | None = None
    visibility: str
    owner_id: str
    project_id: str
    created_at: datetime


class ImageSave(WireIn):
    name: str = Field(min_length=1, max_length=128, description="name of the new image")


class SaveFailure(WireIn):
    reason: str = Field(max_length=4000)
