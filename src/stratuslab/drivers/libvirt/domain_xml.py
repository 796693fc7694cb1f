"""Build libvirt domain XML from a :class:`DomainSpec`.

The shape, top to bottom::

    <domain type='qemu|kvm' xmlns:qemu=...>
      name, uuid, metadata, memory, vcpu
      <os> hvm on machine 'pc', SeaBIOS mirrored on the serial port
      <features> acpi (so ACPI shutdown works), TCG translation-cache size
      on_poweroff/on_reboot/on_crash
      <devices> disks (first disk boots), volumes (vdc..), NICs of ``spec.nics`` (bridge:
                tap named by <target dev>), serial console logged by virtlogd, virtio RNG
      <qemu:commandline> user-mode NIC: -netdev user,restrict=on,hostfwd=... -device virtio-net

The default NIC bypasses libvirt's ``<interface>`` on purpose: QEMU's user-mode stack with
``restrict=on`` gives the guest DHCP and the forwarded ports and no route anywhere else. NICs on
virtual networks are ordinary ``<interface type='bridge'>`` devices on the network's bridge.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

from stratuslab.drivers.base import (
    VOLUME_SERIAL_CHARS,
    DiskSpec,
    DomainSpec,
    NicSpec,
    PortForward,
)
from stratuslab.errors import InvalidInput
from stratuslab.types import Hypervisor

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
STRATUS_NS = "https://stratuslab.org/xmlns/domain/1.0"
#: The NIC lives outside libvirt's address allocation: a PCI slot libvirt will not reach.
NIC_PCI_ADDR = "0x1e"
NETDEV_ID = "stratusnet0"
#: libvirt user aliases start with ``ua-``; a volume's disk is ``ua-vol-<volume id>``.
VOLUME_ALIAS_PREFIX = "ua-vol-"


def domain_xml(spec: DomainSpec) -> str:
    """The libvirt XML for ``spec``, indented, without an XML declaration."""
    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace("stratus", STRATUS_NS)
    root = ET.Element("domain", type=spec.hypervisor.value)
    _text(root, "name", spec.name)
    _text(root, "uuid", spec.uuid)
    root.append(_metadata(spec))
    _text(root, "memory", str(spec.memory_mib), unit="MiB")
    _text(root, "vcpu", str(spec.vcpus))
    root.append(_os(spec))
    root.append(_features(spec))
    _text(root, "on_poweroff", "destroy")
    _text(root, "on_reboot", "restart")
    _text(root, "on_crash", "destroy")
    root.append(_devices(spec))
    if spec.user_network:
        root.append(_qemu_commandline(user_network_args(spec)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def user_network_args(spec: DomainSpec) -> list[str]:
    """QEMU arguments for the user-mode NIC with ``spec``'s port forwards."""
    restrict = "restrict=off" if spec.user_network_egress else "restrict=on"
    netdev = ",".join([f"user,id={NETDEV_ID}", restrict, *map(_hostfwd, spec.port_forwards)])
    nic = ",".join(
        [
            f"virtio-net-pci,netdev={NETDEV_ID}",
            f"mac={spec.mac or mac_for(spec.uuid)}",
            "romfile=",  # no iPXE option ROM: we never boot from the network
            f"bus=pci.0,addr={NIC_PCI_ADDR}",
        ]
    )
    return ["-netdev", netdev, "-device", nic]


def mac_for(uuid: str) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from ``uuid``."""
    digest = hashlib.sha256(uuid.encode()).digest()
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in digest[:3])


def _hostfwd(forward: PortForward) -> str:
    return (
        f"hostfwd={forward.protocol}:{forward.host_addr}:{forward.host_port}-:{forward.guest_port}"
    )


def _metadata(spec: DomainSpec) -> ET.Element:
    metadata = ET.Element("metadata")
    instance = ET.SubElement(metadata, f"{{{STRATUS_NS}}}instance", uuid=spec.uuid)
    for key, value in sorted(spec.metadata.items()):
        _text(instance, f"{{{STRATUS_NS}}}meta", value, key=key)
    return metadata


def _os(spec: DomainSpec) -> ET.Element:
    os_ = ET.Element("os")
    _text(os_, "type", "hvm", arch=spec.arch, machine="pc")
    ET.SubElement(os_, "bios", useserial="yes")  # SeaBIOS messages on the serial console
    return os_


def _features(spec: DomainSpec) -> ET.Element:
    features = ET.Element("features")
    ET.SubElement(features, "acpi")
    if spec.hypervisor is Hypervisor.QEMU:
        tcg = ET.SubElement(features, "tcg")
        _text(tcg, "tb-cache", str(spec.tcg_tb_size_mib), unit="MiB")
    return features


def _devices(spec: DomainSpec) -> ET.Element:
    devices = ET.Element("devices")
    boots_set = any(disk.boot_order is not None for disk in spec.disks)
    for index, disk in enumerate(spec.disks):
        boot_order = disk.boot_order if boots_set else (1 if index == 0 else None)
        devices.append(_disk(disk, boot_order))
    _check_targets(spec)
    for volume in spec.volumes:
        devices.append(disk_xml(volume.disk_spec()))
    for nic in spec.nics:
        devices.append(_interface(nic))
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(spec.console_log), append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    _text(rng, "backend", "/dev/urandom", model="random")
    ET.SubElement(devices, "memballoon", model="none")
    return devices


def disk_xml(disk: DiskSpec) -> ET.Element:
    """One ``<disk>`` element (used for hot-plug too)."""
    return _disk(disk, disk.boot_order)


def volume_alias(volume_id: str) -> str:
    """The libvirt user alias of a volume's disk: how hot-plug finds it again."""
    return f"{VOLUME_ALIAS_PREFIX}{volume_id}"


def _disk(disk: DiskSpec, boot_order: int | None) -> ET.Element:
    kind = "file" if disk.network is None else "network"
    element = ET.Element("disk", type=kind, device=disk.device)
    ET.SubElement(element, "driver", name="qemu", type=disk.format)
    if disk.network is None:
        ET.SubElement(element, "source", file=str(disk.path))
    else:
        source = ET.SubElement(
            element, "source", protocol=disk.network.protocol, name=disk.network.name
        )
        ET.SubElement(source, "host", name=disk.network.host, port=str(disk.network.port))
    ET.SubElement(element, "target", dev=disk.target, bus=disk.bus)
    if boot_order is not None:
        ET.SubElement(element, "boot", order=str(boot_order))
    if disk.readonly or disk.device == "cdrom":
        ET.SubElement(element, "readonly")
    if disk.shareable:
        ET.SubElement(element, "shareable")
    if disk.volume_id is not None:
        _text(element, "serial", disk.volume_id[:VOLUME_SERIAL_CHARS])
        ET.SubElement(element, "alias", name=volume_alias(disk.volume_id))
    return element


def _check_targets(spec: DomainSpec) -> None:
    targets = [disk.target for disk in spec.disks] + [vol.target for vol in spec.volumes]
    clashes = sorted({target for target in targets if targets.count(target) > 1})
    if clashes:
        raise InvalidInput(
            f"domain {spec.name}: more than one disk on target {', '.join(clashes)}",
            hint="volumes take vdc.. by attachment index; give instance disks other targets",
        )


def _interface(nic: NicSpec) -> ET.Element:
    if nic.kind not in ("bridge", "user") or (nic.kind == "bridge") != (nic.bridge is not None):
        raise InvalidInput(
            f"NIC {nic.mac}: kind {nic.kind!r} with bridge {nic.bridge!r} is not valid",
            hint="a bridge NIC names its bridge; a user NIC names none",
        )
    element = ET.Element("interface", type=nic.kind)
    ET.SubElement(element, "mac", address=nic.mac)
    if nic.bridge is not None:
        ET.SubElement(element, "source", bridge=nic.bridge)
    if nic.target is not None:
        ET.SubElement(element, "target", dev=nic.target)
    ET.SubElement(element, "model", type=nic.model)
    ET.SubElement(element, "rom", enabled="no")  # no iPXE: we never boot from the network
    return element


def _qemu_commandline(args: list[str]) -> ET.Element:
    commandline = ET.Element(f"{{{QEMU_NS}}}commandline")
    for arg in args:
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    return commandline


def _text(parent: ET.Element, tag: str, text: str, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    element.text = text
    return element
