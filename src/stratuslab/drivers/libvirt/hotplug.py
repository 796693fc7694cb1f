"""Attach and detach persistent volumes on libvirt domains, live and in the definition.

A volume's disk carries the user alias ``ua-vol-<volume id>`` and the serial
``<volume id>[:20]``; the alias is how this module finds it again (after an agent restart, in
the live or the persistent XML), the serial is how the guest finds it (``/sys/block/*/serial``).
Its target comes from the attachment index (:func:`~stratuslab.drivers.base.volume_target`),
so it never lands on a boot disk.

Attach and detach act on each view that needs it, the live domain first and then the
persistent definition, so a half-done call is finished by the next one. Live detach is a
request to the guest (ACPI PCI hot-plug): libvirt returns before the guest lets go, so
:func:`detach` polls the live XML until the disk is gone. A guest without ACPI hot-plug
support never lets go; that is a :class:`~stratuslab.errors.DriverError` after ``timeout``.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratuslab.drivers.base import (
    FIRST_VOLUME_TARGET,
    MAX_VOLUMES,
    NetworkSource,
    VolumeAttachment,
)
from stratuslab.drivers.libvirt.connection import error_code, libvirt_errors, load_libvirt
from stratuslab.drivers.libvirt.domain_xml import VOLUME_ALIAS_PREFIX, disk_xml, volume_alias
from stratuslab.errors import Conflict, DriverError

_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class _Disk:
    """A ``<disk>`` of a domain's XML: its target and, for volumes, the attachment."""

    target: str
    alias: str | None
    attachment: VolumeAttachment | None


def attach(dom: Any, attachment: VolumeAttachment) -> None:
    """Attach ``attachment`` to ``dom`` where it is missing (live, then persistent)."""
    device = ET.tostring(disk_xml(attachment.disk_spec()), encoding="unicode")
    for flag, disks in _views(dom):
        if _missing(dom, disks, attachment):
            with libvirt_errors(f"attach volume {attachment.volume_id} to {dom.name()}"):
                dom.attachDeviceFlags(device, flag)


def detach(dom: Any, attachment: VolumeAttachment, *, timeout: float) -> None:
    """Detach ``attachment`` from ``dom`` where it is present; wait for the guest to let go."""
    libvirt = load_libvirt()
    for flag, disks in _views(dom):
        if not _present(dom, disks, attachment):
            continue
        try:
            with libvirt_errors(f"detach volume {attachment.volume_id} from {dom.name()}"):
                dom.detachDeviceAlias(volume_alias(attachment.volume_id), flag)
        except DriverError as exc:
            # A second request while the guest still handles the first one.
            if error_code(exc) != libvirt.VIR_ERR_OPERATION_IN_PROGRESS:
                raise
        if flag == libvirt.VIR_DOMAIN_AFFECT_LIVE:
            _wait_released(dom, attachment, timeout)


def attached(dom: Any) -> tuple[VolumeAttachment, ...]:
    """The volumes of ``dom``: live when it runs, else as defined; by index."""
    views = _views(dom)
    disks = views[0][1] if views else {}
    found = [disk.attachment for disk in disks.values() if disk.attachment is not None]
    return tuple(sorted(found, key=lambda attachment: attachment.index))


def parse_disks(xml: str) -> dict[str, _Disk]:
    """The disks of a domain XML by target; volumes (``ua-vol-`` aliases) parsed back."""
    disks: dict[str, _Disk] = {}
    for element in ET.fromstring(xml).iterfind("devices/disk"):
        target_element = element.find("target")
        if target_element is None:
            continue
        target = target_element.get("dev", "")
        alias_element = element.find("alias")
        alias = None if alias_element is None else alias_element.get("name")
        attachment = _attachment(element, target, alias)
        disks[target] = _Disk(target, alias, attachment)
    return disks


# -- internals ------------------------------------------------------------------------------


def _views(dom: Any) -> list[tuple[int, dict[str, _Disk]]]:
    """(flag, disks) for the live domain when it runs, then for the persistent definition."""
    libvirt = load_libvirt()
    views: list[tuple[int, dict[str, _Disk]]] = []
    with libvirt_errors(f"read the disks of {dom.name()}"):
        if dom.isActive():
            views.append((libvirt.VIR_DOMAIN_AFFECT_LIVE, parse_disks(dom.XMLDesc(0))))
        if dom.isPersistent():
            inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            views.append((libvirt.VIR_DOMAIN_AFFECT_CONFIG, parse_disks(inactive)))
    return views


def _missing(dom: Any, disks: dict[str, _Disk], attachment: VolumeAttachment) -> bool:
    """True if ``attachment`` must be attached in this view; Conflict if it cannot be."""
    alias = volume_alias(attachment.volume_id)
    holder = disks.get(attachment.target)
    if holder is not None and holder.alias == alias:
        return False
    if holder is not None:
        what = f"volume {holder.attachment.volume_id}" if holder.attachment else "a boot disk"
        raise Conflict(
            f"target {attachment.target} of domain {dom.name()} already holds {what}",
            hint="use another attachment index, or detach that disk first",
        )
    elsewhere = [disk.target for disk in disks.values() if disk.alias == alias]
    if elsewhere:
        raise Conflict(
            f"volume {attachment.volume_id} is already attached to {dom.name()} as {elsewhere[0]}",
            hint="detach it first to move it to another index",
        )
    return True


def _present(dom: Any, disks: dict[str, _Disk], attachment: VolumeAttachment) -> bool:
    """True if ``attachment`` is attached in this view; Conflict if its target holds another."""
    holder = disks.get(attachment.target)
    if holder is None:
        return False
    if holder.alias != volume_alias(attachment.volume_id):
        what = f"volume {holder.attachment.volume_id}" if holder.attachment else "a boot disk"
        raise Conflict(
            f"target {attachment.target} of domain {dom.name()} is {what}, "
            f"not volume {attachment.volume_id}",
            hint="boot disks cannot be detached; check the attachment index",
        )
    return True


def _wait_released(dom: Any, attachment: VolumeAttachment, timeout: float) -> None:
    alias = volume_alias(attachment.volume_id)
    deadline = time.monotonic() + timeout
    while True:
        with libvirt_errors(f"read the disks of {dom.name()}"):
            if not dom.isActive():
                return
            disks = parse_disks(dom.XMLDesc(0))
        if all(disk.alias != alias for disk in disks.values()):
            return
        if time.monotonic() >= deadline:
            raise DriverError(
                f"the guest of {dom.name()} did not release volume {attachment.volume_id} "
                f"({attachment.target}) within {timeout:g} s",
                hint="the guest kernel needs ACPI PCI hot-plug (CONFIG_HOTPLUG_PCI_ACPI); "
                "retry, or stop the instance and detach it then",
            )
        time.sleep(_POLL_SECONDS)


def _attachment(element: ET.Element, target: str, alias: str | None) -> VolumeAttachment | None:
    if alias is None or not alias.startswith(VOLUME_ALIAS_PREFIX):
        return None
    index = _index(target)
    if index is None:
        return None
    driver = element.find("driver")
    source = element.find("source")
    path, network = None, None
    if element.get("type") == "network" and source is not None:
        host = source.find("host")
        network = NetworkSource(
            protocol=source.get("protocol", ""),
            name=source.get("name", ""),
            host="" if host is None else host.get("name", ""),
            port=int(host.get("port", "3260")) if host is not None else 3260,
        )
    else:
        path = Path(source.get("file", "")) if source is not None else Path()
    return VolumeAttachment(
        volume_id=alias.removeprefix(VOLUME_ALIAS_PREFIX),
        index=index,
        format="raw" if driver is None else driver.get("type", "raw"),
        path=path,
        network=network,
        readonly=element.find("readonly") is not None,
        shareable=element.find("shareable") is not None,
    )


def _index(target: str) -> int | None:
    if len(target) != 3 or not target.startswith("vd"):
        return None
    index = ord(target[2]) - ord("a") - FIRST_VOLUME_TARGET
    return index if 0 <= index < MAX_VOLUMES else None
