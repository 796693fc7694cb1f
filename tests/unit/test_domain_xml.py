"""Domain XML: golden files plus a few structural checks.

A missing golden file is written by the test; ``STRATUS_REGENERATE=1 pytest ...`` rewrites
all of them. Review the diff before committing.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stratuslab.drivers.base import DiskSpec, DomainSpec, PortForward
from stratuslab.drivers.libvirt.domain_xml import QEMU_NS, domain_xml, mac_for, user_network_args
from stratuslab.types import Hypervisor

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "domain_xml"
INSTANCES = Path("/var/lib/stratuslab/instances")
UUID = "6f1c2d3e-4b5a-4c6d-8e7f-901234567890"


def tcg_spec() -> DomainSpec:
    return DomainSpec(
        uuid=UUID,
        name="stratus-web-1",
        vcpus=1,
        memory_mib=512,
        disks=(DiskSpec(path=INSTANCES / UUID / "root.qcow2"),),
        console_log=INSTANCES / UUID / "console.log",
        port_forwards=(PortForward(host_port=40022),),
    )


def kvm_spec() -> DomainSpec:
    return DomainSpec(
        uuid=UUID,
        name="stratus-db-2",
        vcpus=4,
        memory_mib=4096,
        disks=(
            DiskSpec(path=INSTANCES / UUID / "root.qcow2", bus="sata", target="sda", boot_order=1),
            DiskSpec(path=INSTANCES / UUID / "data.raw", format="raw", target="vdb"),
            DiskSpec(
                path=INSTANCES / UUID / "seed.iso",
                format="raw",
                device="cdrom",
                bus="sata",
                target="sdb",
                boot_order=2,
            ),
        ),
        console_log=INSTANCES / UUID / "console.log",
        hypervisor=Hypervisor.KVM,
        port_forwards=(
            PortForward(host_port=40023),
            PortForward(host_port=48080, guest_port=80, host_addr="0.0.0.0"),
            PortForward(host_port=45353, guest_port=53, protocol="udp"),
        ),
        mac="52:54:00:aa:bb:cc",
        metadata={"owner": "alice", "project": "astro"},
    )


def offline_spec() -> DomainSpec:
    return DomainSpec(
        uuid=UUID,
        name="stratus-batch-3",
        vcpus=2,
        memory_mib=1024,
        disks=(DiskSpec(path=INSTANCES / UUID / "root.qcow2"),),
        console_log=INSTANCES / UUID / "console.log",
        user_network=False,
        tcg_tb_size_mib=64,
    )


SPECS = {"tcg": tcg_spec, "kvm": kvm_spec, "offline": offline_spec}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_matches_golden_file(name: str) -> None:
    actual = domain_xml(SPECS[name]())
    golden = GOLDEN / f"{name}.xml"
    if os.environ.get("STRATUS_REGENERATE") == "1" or not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(actual)
    assert actual == golden.read_text()


def attribute(root: ET.Element, path: str, name: str) -> str:
    element = root.find(path)
    assert element is not None, path
    return element.get(name, "")


def test_tcg_domain_shape() -> None:
    root = ET.fromstring(domain_xml(tcg_spec()))
    assert root.get("type") == "qemu"
    assert root.find("devices/interface") is None
    assert root.find("features/acpi") is not None
    assert root.findtext("features/tcg/tb-cache") == "128"
    assert attribute(root, "devices/disk/boot", "order") == "1"
    assert attribute(root, "devices/serial/log", "file").endswith("console.log")
    args = [arg.get("value", "") for arg in root.iter(f"{{{QEMU_NS}}}arg")]
    assert args[0] == "-netdev"
    assert "restrict=on" in args[1].split(",")
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in args[1].split(",")


def test_kvm_domain_has_no_tcg_settings() -> None:
    root = ET.fromstring(domain_xml(kvm_spec()))
    assert root.get("type") == "kvm"
    assert root.find("features/tcg") is None


def test_explicit_boot_orders_are_kept() -> None:
    root = ET.fromstring(domain_xml(kvm_spec()))
    orders = [disk.find("boot") for disk in root.iterfind("devices/disk")]
    assert [None if boot is None else boot.get("order") for boot in orders] == ["1", None, "2"]


def test_cdrom_is_read_only() -> None:
    root = ET.fromstring(domain_xml(kvm_spec()))
    cdrom = root.find("devices/disk[@device='cdrom']")
    assert cdrom is not None
    assert cdrom.find("readonly") is not None


def test_no_user_network_means_no_qemu_commandline() -> None:
    root = ET.fromstring(domain_xml(offline_spec()))
    assert root.find(f"{{{QEMU_NS}}}commandline") is None


def test_mac_is_stable_and_local() -> None:
    assert mac_for(UUID) == mac_for(UUID)
    assert mac_for(UUID).startswith("52:54:00:")
    assert mac_for(UUID) != mac_for("00000000-0000-4000-8000-000000000000")
    assert f"mac={mac_for(UUID)}" in user_network_args(tcg_spec())[3]
