"""The libvirt compute driver.

``libvirt.libvirtError`` never leaves this package: :mod:`.connection` turns it into
:class:`stratuslab.errors.DriverError`. The bindings are imported on first use.
"""

from __future__ import annotations

from stratuslab.drivers.libvirt.driver import LibvirtComputeDriver

__all__ = ["LibvirtComputeDriver"]
