from __future__ import annotations

from datetime import datetime
from typing import Any

from stratuslab.schemas.common import Wire


class Event(Wire):
    id: int
    time: datetime
    kind: str
    level: str
    message: str
    instance_id: str | None
    host_id: str | None
    data: dict[str, Any]
