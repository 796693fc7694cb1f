"""Compute drivers by name, imported only when asked for.

Importing a driver module may need optional system libraries (the libvirt bindings), so the
registry maps names to ``"module:Class"`` strings and imports on demand.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from stratuslab.drivers.base import ComputeDriver
from stratuslab.errors import InvalidInput

COMPUTE_DRIVERS: dict[str, str] = {
    "fake": "stratuslab.drivers.fake:FakeComputeDriver",
    "libvirt": "stratuslab.drivers.libvirt.driver:LibvirtComputeDriver",
}


def get_compute_driver(name: str, **options: Any) -> ComputeDriver:
    """Build the compute driver called ``name`` with ``options`` as constructor arguments."""
    target = COMPUTE_DRIVERS.get(name)
    if target is None:
        raise InvalidInput(
            f"unknown compute driver {name!r}",
            hint=f"use one of: {', '.join(sorted(COMPUTE_DRIVERS))}",
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cast(ComputeDriver, cls(**options))
