"""DHCP from the driver's dnsmasq on a bridge inside a namespace.

First busybox ``udhcpc`` in "instance" namespaces (fast); then a real tiny-appliance guest, QEMU
(TCG) started inside the host namespace on a tap the driver created: it gets its reserved
address from our dnsmasq, answers ping, and reaches another instance on the bridge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface, IPv6Network
from pathlib import Path

import pytest

from stratuslab.drivers.network.base import (
    DEFAULT_SECURITY_GROUP,
    DhcpHost,
    HostNetworkSpec,
    SecuredPort,
)
from stratuslab.drivers.network.linux import LinuxNetworkDriver
from stratuslab.networks.ipam import eui64
from tests.netns import Netns, NetnsLab, netns_lab, require_root_tools, wait_until

pytestmark = pytest.mark.functional
CACHE = Path(os.environ.get("STRATUS_TEST_CACHE", "/var/cache/stratuslab-test")) / "tiny"
UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
echo "ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu" > "{out}"
"""
A = DhcpHost("02:00:c6:13:03:0a", IPv4Address("198.19.3.10"), "vm-a")
B = DhcpHost("02:00:c6:13:03:0b", IPv4Address("198.19.3.11"), "vm-b")


def spec(*hosts: DhcpHost) -> HostNetworkSpec:
    return HostNetworkSpec(
        name="dhcp",
        bridge="sbr-dhcp",
        address=IPv4Interface("198.19.3.1/24"),
        gateway=IPv4Address("198.19.3.1"),
        dns=(IPv4Address("198.19.3.2"), IPv4Address("198.19.3.3")),
        mtu=1450,
        dhcp_hosts=hosts,
    )


@dataclass
class Site:
    lab: NetnsLab
    host: Netns
    driver: LinuxNetworkDriver
    tmp: Path

    def instance(self, label: str, mac: str) -> Netns:
        ns = self.lab.instance(self.host, f"vi-{label}", label, mac=mac)
        self.driver.plug("dhcp", f"vi-{label}")
        return ns

    def udhcpc(self, ns: Netns, *, tries: int = 3) -> str | None:
        """The lease udhcpc obtained (as the script saw it), or None."""
        out = self.tmp / f"{ns.name}.lease"
        script = self.tmp / f"{ns.name}.sh"
        script.write_text(UDHCPC_SCRIPT.format(out=out))
        script.chmod(0o755)
        args = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", str(tries), "-T", "1"]
        ns.run([*args, "-O", "mtu", "-s", str(script)], check=False, timeout=tries * 3 + 10)
        return out.read_text().strip() if out.exists() else None


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    require_root_tools("nft", "dnsmasq", "busybox")
    with netns_lab() as lab:
        host = lab.namespace("host")
        driver = LinuxNetworkDriver(
            state_dir=lab.state_dir("host"), netns=host.name, manage_sysctls=True
        )
        yield Site(lab, host, driver, tmp_path)
        for name in driver.networks():
            for port in driver.status(name).ports:
                driver.unplug(port)
            driver.remove_network(name)  # stops dnsmasq by PID


def test_reserved_address_only_and_reservations_reload(site: Site) -> None:
    site.driver.ensure_network(spec(A))
    pid = site.driver._dnsmasq_pid("dhcp")
    a = site.instance("a", A.mac)
    started = time.perf_counter()
    lease = site.udhcpc(a)
    print(f"udhcpc lease in {time.perf_counter() - started:.2f} s: {lease}")
    assert lease == "ip=198.19.3.10 mask=24 router=198.19.3.1 dns=198.19.3.2 198.19.3.3 mtu=1450"
    assert a.ping("198.19.3.1")

    b = site.instance("b", B.mac)
    assert site.udhcpc(b, tries=2) is None, "an unknown MAC gets no address"

    site.driver.ensure_network(spec(A, B))
    assert site.driver._dnsmasq_pid("dhcp") == pid, "reservations reload without a restart"
    assert site.udhcpc(b) is not None
    assert (site.tmp / f"{b.name}.lease").read_text().startswith("ip=198.19.3.11 ")
    assert b.ping("198.19.3.10")
    leases = (site.driver.state_dir / "networks" / "dhcp.leases").read_text()
    assert "02:00:c6:13:03:0b 198.19.3.11 vm-b" in leases


def test_dnsmasq_is_restarted_when_the_network_changes(site: Site) -> None:
    site.driver.ensure_network(spec(A))
    pid = site.driver._dnsmasq_pid("dhcp")
    changed = spec(A)
    site.driver.ensure_network(HostNetworkSpec(**{**changed.__dict__, "lease_seconds": 600}))
    new_pid = site.driver._dnsmasq_pid("dhcp")
    assert new_pid is not None and new_pid != pid
    assert pid is not None and not alive(pid)
    a = site.instance("a", A.mac)
    assert site.udhcpc(a) is not None


def test_slaac_gives_the_address_ipam_leased(site: Site) -> None:
    """IPv6: dnsmasq only advertises the /64; the guest's SLAAC address is the EUI-64 one that
    the IPAM leased and wrote into the cloud-init network-config."""
    prefix = IPv6Network("fd00:5eed:3::/64")
    site.driver.ensure_network(replace(spec(A), address6=IPv6Interface("fd00:5eed:3::1/64")))
    a = site.instance("a", A.mac)
    a.run(["sysctl", "-q", "-w", "net.ipv6.conf.eth0.addr_gen_mode=0"])  # EUI-64, the default
    expected = str(eui64(prefix, A.mac))

    def has_address() -> bool:
        return f"inet6 {expected}/64" in a.ip("-6", "addr", "show", "dev", "eth0")

    assert wait_until(has_address, timeout=30, interval=0.5), a.ip("-6", "addr")
    assert wait_until(
        lambda: (
            a.run(
                ["busybox", "ping", "-6", "-c", "1", "-W", "2", "fd00:5eed:3::1"], check=False
            ).returncode
            == 0
        ),
        10,
    )


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --------------------------------------------------------------------------------------------
# A real guest


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tools = ("qemu-system-x86_64", "qemu-img", "apt-get", "extlinux", "mkfs.ext4", "ssh")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'the tiny appliance tools'}")
    from stratuslab.appliances.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny.qcow2", cache_dir=CACHE)


def boot_guest(
    site: Site, image: Path, tap: str, mac: str, seed: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    overlay = site.tmp / f"{tap}.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)],
        check=True,
    )
    serial = site.tmp / f"{tap}.serial"
    args = [
        "qemu-system-x86_64", "-accel", "tcg,tb-size=128", "-m", "192", "-nographic",
        "-serial", f"file:{serial}", "-monitor", "none",
        "-drive", f"file={overlay},if=virtio",
        "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
    ]  # fmt: skip
    with (site.tmp / f"{tap}.qemu.out").open("wb") as log:
        process = site.host.popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return process, serial


def ssh(site: Site, key: Path, address: str, command: str) -> subprocess.CompletedProcess[str]:
    args = [
        "ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
        f"root@{address}", command,
    ]  # fmt: skip
    return site.host.run(args, check=False, timeout=60)


def test_tiny_guest_gets_its_lease_and_reaches_another_instance(
    site: Site, tiny_image: Path
) -> None:
    from stratuslab.context import build_nocloud, write_seed_iso

    key = site.tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    seed = site.tmp / "seed.iso"
    files = build_nocloud(
        instance_id="i-net-1", hostname="tiny", ssh_keys=[key.with_suffix(".pub").read_text()]
    )
    write_seed_iso(files, seed)
    guest = DhcpHost("02:00:c6:13:03:14", IPv4Address("198.19.3.20"), "tiny")
    site.driver.ensure_network(spec(A, guest))
    site.driver.plug("dhcp", "st-tiny0", create_tap=True)
    site.driver.apply_security_group(
        SecuredPort("st-tiny0", guest.mac, (guest.ipv4,)), DEFAULT_SECURITY_GROUP
    )
    other = site.instance("a", A.mac)
    assert site.udhcpc(other) is not None

    started = time.monotonic()
    process, serial = boot_guest(site, tiny_image, "st-tiny0", guest.mac, seed)
    leases = site.driver.state_dir / "networks" / "dhcp.leases"

    def leased() -> bool:
        return process.poll() is not None or (leases.exists() and guest.mac in leases.read_text())

    got_lease = wait_until(leased, timeout=150, interval=0.2)
    lease_s = time.monotonic() - started
    console = serial.read_text(errors="replace") if serial.exists() else ""
    assert got_lease and process.poll() is None, f"no lease:\n{console[-2000:]}"
    assert f"{guest.mac} {guest.ipv4} tiny" in leases.read_text()
    assert wait_until(lambda: site.host.ping(str(guest.ipv4)), timeout=30), "guest answers ping"
    print(f"tiny guest: DHCP lease {lease_s:.1f} s after QEMU start")

    assert wait_until(lambda: "STRATUSLAB-TINY READY" in serial.read_text(errors="replace"), 90)
    assert other.ping(str(guest.ipv4)), "another instance reaches the guest (ICMP is allowed)"
    done = ssh(site, key, str(guest.ipv4), f"ip -4 addr show eth0; ping -c 1 -W 2 {A.ipv4}")
    assert done.returncode == 0, done.stderr
    assert f"inet {guest.ipv4}/24" in done.stdout, "the guest holds the reserved address"
    assert "1 packets received" in done.stdout, "the guest reaches the other instance"
    process.kill()
    process.wait()
