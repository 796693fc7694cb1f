from __future__ import annotations

from datetime import datetime
from typing import Any

from stratuslab.schemas.common import Wire


class Operation(Wire):
    id: str
    kind: str
    status: str
    target_type: str
    target_ids: list[str]
    error: dict[str, Any] | None
    progress: str
    created_at: datetime
    finished_at: datetime | None
