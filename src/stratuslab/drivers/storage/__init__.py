"""Volume backends: persistent disks behind one contract (:mod:`.base`), found by name
(:mod:`.registry`): ``file``, ``iscsi`` and ``fake``."""

from __future__ import annotations

from stratuslab.drivers.storage.base import (
    BackendFeatures,
    VolumeBackend,
    VolumeExport,
    VolumeInfo,
)
from stratuslab.drivers.storage.registry import get_volume_backend

__all__ = ["BackendFeatures", "VolumeBackend", "VolumeExport", "VolumeInfo", "get_volume_backend"]
