"""Attach and detach NICs of libvirt domains, live and in the definition.

A NIC is found again by its MAC (every ``<interface>`` of our domains has one). Two kinds:

* ``bridge``: ``<interface type='bridge'>`` on the network's bridge, tap named ``target``
  (what :mod:`~stratuslab.drivers.libvirt.domain_xml` writes at define time too);
* ``ethernet``: ``<interface type='ethernet'>``, a tap named ``target`` that libvirt creates
  and leaves alone: the host network driver plugs it. That is how a guest reaches a bridge
  libvirt cannot see, such as one inside a network namespace.

Like :mod:`.hotplug`, each call acts on each view that needs it (live first, then persistent),
so a half-done call is finished by the next; detaching waits for the guest to let go.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Any

from stratuslab.drivers.base import NicSpec
from stratuslab.drivers.libvirt.connection import Connection, libvirt_errors, load_libvirt
from stratuslab.errors import DriverError, InvalidInput

_POLL_SECONDS = 0.2


def interface_xml(nic: NicSpec) -> str:
    """The ``<interface>`` element of ``nic``."""
    if nic.kind not in ("bridge", "ethernet") or (nic.kind == "bridge") != (nic.bridge is not None):
        raise InvalidInput(
            f"NIC {nic.mac}: kind {nic.kind!r} with bridge {nic.bridge!r} cannot be hot-plugged",
            hint="a bridge NIC names its bridge; an ethernet NIC names a target tap",
        )
    element = ET.Element("interface", type=nic.kind)
    ET.SubElement(element, "mac", address=nic.mac)
    if nic.bridge is not None:
        ET.SubElement(element, "source", bridge=nic.bridge)
    if nic.target is not None:
        ET.SubElement(element, "target", dev=nic.target)
    ET.SubElement(element, "model", type=nic.model)
    ET.SubElement(element, "rom", enabled="no")
    return ET.tostring(element, encoding="unicode")


def macs(xml: str) -> set[str]:
    """The MACs of the ``<interface>`` elements of a domain XML."""
    found = set()
    for element in ET.fromstring(xml).iterfind("devices/interface/mac"):
        address = element.get("address")
        if address:
            found.add(address.lower())
    return found


def attach(dom: Any, nic: NicSpec) -> None:
    device = interface_xml(nic)
    for flag, present in _views(dom):
        if nic.mac not in present:
            with libvirt_errors(f"attach NIC {nic.mac} to {dom.name()}"):
                dom.attachDeviceFlags(device, flag)


def detach(dom: Any, mac: str, *, timeout: float) -> None:
    libvirt = load_libvirt()
    for flag, present in _views(dom):
        if mac not in present:
            continue
        device = _device_xml(dom, mac, flag)
        with libvirt_errors(f"detach NIC {mac} from {dom.name()}"):
            dom.detachDeviceFlags(device, flag)
        if flag == libvirt.VIR_DOMAIN_AFFECT_LIVE:
            _wait_released(dom, mac, timeout)


def attached(dom: Any) -> set[str]:
    """MACs of the domain's NICs: live when it runs, else as defined."""
    views = _views(dom)
    return views[0][1] if views else set()


class LibvirtNics:
    """The agent's NIC hot-plug backend on libvirt (its own connection to ``uri``)."""

    create_taps = False

    def __init__(self, uri: str = "qemu:///system", *, detach_timeout: float = 30.0) -> None:
        self._conn = Connection(uri)
        self.detach_timeout = detach_timeout

    def defined(self, uuid: str, nics: tuple[NicSpec, ...]) -> None:
        """Nothing to remember: the domain XML says which NICs a domain has."""

    def attach(self, uuid: str, nic: NicSpec) -> None:
        attach(self._dom(uuid), nic)

    def detach(self, uuid: str, mac: str) -> None:
        detach(self._dom(uuid), mac, timeout=self.detach_timeout)

    def macs(self, uuid: str) -> set[str]:
        return attached(self._dom(uuid))

    def forget(self, uuid: str) -> None:
        """Nothing to forget."""

    def close(self) -> None:
        self._conn.close()

    def _dom(self, uuid: str) -> Any:
        with libvirt_errors(f"look up domain {uuid}"):
            return self._conn.get().lookupByUUIDString(uuid)


def _views(dom: Any) -> list[tuple[int, set[str]]]:
    libvirt = load_libvirt()
    views: list[tuple[int, set[str]]] = []
    with libvirt_errors(f"read the NICs of {dom.name()}"):
        if dom.isActive():
            views.append((libvirt.VIR_DOMAIN_AFFECT_LIVE, macs(dom.XMLDesc(0))))
        if dom.isPersistent():
            inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            views.append((libvirt.VIR_DOMAIN_AFFECT_CONFIG, macs(inactive)))
    return views


def _device_xml(dom: Any, mac: str, flag: int) -> str:
    libvirt = load_libvirt()
    xml_flags = 0 if flag == libvirt.VIR_DOMAIN_AFFECT_LIVE else libvirt.VIR_DOMAIN_XML_INACTIVE
    with libvirt_errors(f"read the NICs of {dom.name()}"):
        root = ET.fromstring(dom.XMLDesc(xml_flags))
    for element in root.iterfind("devices/interface"):
        found = element.find("mac")
        if found is not None and (found.get("address") or "").lower() == mac:
            return ET.tostring(element, encoding="unicode")
    raise DriverError(f"domain {dom.name()} has no NIC {mac}", hint="nothing to detach")


def _wait_released(dom: Any, mac: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with libvirt_errors(f"read the NICs of {dom.name()}"):
            if not dom.isActive() or mac not in macs(dom.XMLDesc(0)):
                return
        if time.monotonic() >= deadline:
            raise DriverError(
                f"the guest of {dom.name()} did not release NIC {mac} within {timeout:g} s",
                hint="the guest kernel needs ACPI PCI hot-plug; retry, or stop the instance",
            )
        time.sleep(_POLL_SECONDS)
