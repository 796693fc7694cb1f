from __future__ import annotations

from datetime import datetime

from stratuslab.schemas.common import Wire


class Image(Wire):
    id: str
    name: str
    format: str
    size_bytes: int
    virtual_size_bytes: int
    sha256: str
    status: str
    visibility: str
    owner_id: str
    project_id: str
    created_at: datetime
