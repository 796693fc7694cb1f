"""Volume backends by name, imported only when asked for (like the compute drivers).

LVM and Ceph are deliberately absent: no machine the project tests on can run them, and a
backend no test runs is not shipped.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from stratuslab.drivers.storage.base import VolumeBackend
from stratuslab.errors import InvalidInput

VOLUME_BACKENDS: dict[str, str] = {
    "fake": "stratuslab.drivers.storage.fake:FakeVolumeBackend",
    "file": "stratuslab.drivers.storage.file:FileVolumeBackend",
    "iscsi": "stratuslab.drivers.storage.iscsi:IscsiVolumeBackend",
}


def get_volume_backend(name: str, **options: Any) -> VolumeBackend:
    """Build the volume backend called ``name`` with ``options`` as constructor arguments."""
    target = VOLUME_BACKENDS.get(name)
    if target is None:
        raise InvalidInput(
            f"unknown volume backend {name!r}",
            hint=f"use one of: {', '.join(sorted(VOLUME_BACKENDS))}",
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cast(VolumeBackend, cls(**options))
