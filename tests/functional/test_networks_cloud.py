"""Networks through the whole cloud: a real controller and node agent (processes), the agent's
host network driver inside a network namespace the test creates (``network_netns``), and a
real tiny-appliance guest (libvirt, TCG) on a bridged network.

The guest's tap is made by libvirt in the root namespace (an ``ethernet`` interface) and moved
by the agent into the "host" namespace, where the bridge, dnsmasq and the nftables tables live.
The test checks from inside that namespace: the guest gets its reserved address by DHCP and
answers ping and SSH; a security-group change blocks and then allows a real TCP connection
from another "instance" on the bridge; a port forward (PAT) of the host reaches the guest's
SSH. Traffic never leaves the namespaces the test made.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratuslab.client.networks import NetworksApi
from stratuslab.drivers.network.nftables import chain_suffix
from stratuslab.schemas.instances import InstanceCreate
from stratuslab.schemas.networks import (
    NetworkCreate,
    NicCreate,
    PortForwardCreate,
    SecurityRuleCreate,
)
from tests.functional.cloud import Cloud, wait_for
from tests.netns import Netns, NetnsLab, netns_lab, require_root_tools

pytestmark = [pytest.mark.functional, pytest.mark.slow]
GUEST = "198.19.40.10"
CLIENT = "198.19.40.50"


@dataclass
class Site:
    cloud: Cloud
    api: NetworksApi
    lab: NetnsLab
    host: Netns
    state: Path


@pytest.fixture
def site(tiny_image: Path) -> Iterator[Site]:
    require_root_tools("nft", "dnsmasq", "busybox", "ssh")
    root = Path(tempfile.mkdtemp(prefix="stratus-ftest-", dir="/var/tmp"))
    root.chmod(0o755)
    with netns_lab() as lab:
        host = lab.namespace("host")
        state = lab.state_dir("node")
        cloud = Cloud(root, ssh_port_base=26000 + secrets.randbelow(40) * 50)
        cloud.env.update(
            STRATUS_NODE_NETWORK_DRIVER="linux",
            STRATUS_NODE_NETWORK_NETNS=host.name,
            STRATUS_NODE_NETWORK_STATE_DIR=str(state),
            STRATUS_NODE_NETWORK_MANAGE_SYSCTLS="1",
            STRATUS_NODE_RESYNC_INTERVAL="2",
        )
        try:
            cloud.start_controller()
            cloud.start_node()
            wait_for(lambda: len(cloud.client.list_hosts()) == 1, 60, "the node to join")
            cloud.client.upload_image(tiny_image, "tiny")
            yield Site(cloud, NetworksApi(cloud.client), lab, host, state)
        finally:
            try:
                cloud.close()  # deletes the instances, stops the agent
            finally:
                shutil.rmtree(root, ignore_errors=True)


def ssh(site: Site, key: Path, address: str, command: str) -> subprocess.CompletedProcess[str]:
    args = [
        "ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
        f"root@{address}", command,
    ]  # fmt: skip
    return site.host.run(args, check=False, timeout=60)


def test_tiny_guest_on_a_bridged_network(site: Site, ssh_key: Path) -> None:
    api, cloud = site.api, site.cloud
    started = time.monotonic()
    api.create_network(
        NetworkCreate(name="lan", cidr4="198.19.40.0/24", gateway4="198.19.40.1", mtu=1450)
    )
    created = cloud.client.create_instances(
        InstanceCreate(
            image="tiny",
            flavor="t1.micro",
            name="netvm",
            ssh_keys=[ssh_key.with_suffix(".pub").read_text().strip()],
            networks=[f"lan:ip={GUEST}"],
        )
    )
    vm = created.instances[0]
    assert [(n.ipv4, n.address) for n in vm.nics] == [(GUEST, f"{GUEST}/24")]
    cloud.client.wait_operation(created.operation.id, timeout=180)
    running = time.monotonic()
    leases = site.state / "networks" / "lan.leases"

    def leased() -> bool:
        return leases.exists() and f"{vm.nics[0].mac} {GUEST} netvm" in leases.read_text()

    wait_for(leased, 150, f"the guest's DHCP lease\n{cloud.log('node')}")
    got_lease = time.monotonic()
    print(
        f"network + instance running: {running - started:.1f} s; "
        f"DHCP lease {got_lease - running:.1f} s after that"
    )
    wait_for(lambda: site.host.ping(GUEST), 60, "the guest to answer ping")
    wait_for(lambda: "STRATUSLAB-TINY READY" in cloud.console(vm.id), 120, "the guest to be ready")
    done = ssh(site, ssh_key, GUEST, "ip -4 addr show eth0")
    assert done.returncode == 0, done.stderr
    assert f"inet {GUEST}/24" in done.stdout

    _security_group_blocks_then_allows(site)
    _port_forward_reaches_the_guest(site)
    _nic_hot_attach_and_detach(site, ssh_key)

    shown = cloud.client.get_instance("netvm")
    assert shown.address == f"{GUEST}:22" and shown.port_forwards


def _security_group_blocks_then_allows(site: Site) -> None:
    """Another "instance" (a namespace on the bridge) connects to the guest's SSH port."""
    api = site.api
    client = site.lab.instance(site.host, "vi-client", "client", mac="02:00:c6:13:28:32")
    site.host.run(["ip", "link", "set", "dev", "vi-client", "master", "sbr-lan", "up"])
    client.run(["ip", "addr", "add", f"{CLIENT}/24", "dev", "eth0"])

    def connects() -> bool:
        return ssh_banner(client, GUEST, 22)

    try:
        wait_for(connects, 30, "SSH open under the default group")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(site)}") from None
    group = api.get_group("default")
    ssh_rule = next(r for r in group.rules if r.protocol == "tcp" and r.port_min == 22)
    api.remove_rule("default", ssh_rule.id)
    changed = time.monotonic()

    def applied() -> bool:
        rules = site.host.run(["nft", "list", "table", "inet", "stratus_sg"], check=False)
        return "tcp dport 22 accept" not in rules.stdout

    wait_for(applied, 30, "the agent to apply the group change", interval=0.05)
    print(
        f"security group change on the host {time.monotonic() - changed:.2f} s after the API call"
    )
    wait_for(lambda: not connects(), 30, "the group change to block SSH")
    api.add_rule(
        "default",
        SecurityRuleCreate(direction="ingress", protocol="tcp", port_min=22, remote=f"{CLIENT}/32"),
    )
    wait_for(connects, 30, "SSH allowed again from the client")


BANNER = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=8) as s:
        line = s.makefile("rb").readline()
except OSError as exc:
    sys.exit(f"failed: {exc}")
print(line.decode("ascii", "replace").strip())
"""


def ssh_banner(ns: Netns, address: str, port: int) -> bool:
    """True when an SSH server answers at ``address:port`` from inside ``ns``."""
    done = ns.run([sys.executable, "-c", BANNER, address, str(port)], check=False, timeout=20)
    return done.returncode == 0 and done.stdout.startswith("SSH-")


def diagnose(site: Site) -> str:
    """What the host namespace shows: rules, bridge ports, addresses (for failure messages)."""
    parts = [
        site.host.run(cmd, check=False).stdout
        for cmd in (["nft", "list", "ruleset"], ["bridge", "link"], ["ip", "-br", "addr"])
    ]
    return "\n".join(parts) + site.cloud.log("node")


def _nic_hot_attach_and_detach(site: Site, key: Path) -> None:
    """A second NIC joins the running guest (libvirt attach, tap moved into the namespace and
    plugged into the second bridge), then leaves it."""
    api, client = site.api, site.cloud.client
    api.create_network(NetworkCreate(name="lan2", cidr4="198.19.41.0/24", gateway4="198.19.41.1"))
    started = time.monotonic()
    op = api.attach_nic("netvm", NicCreate(network="lan2"))
    client.wait_operation(op.id, timeout=120)
    attached = time.monotonic() - started
    nic = next(n for n in api.list_nics("netvm") if n.network == "lan2")
    bridge_ports = site.host.run(["bridge", "link"]).stdout
    assert f"{nic.tap}" in bridge_ports and "master sbr-lan2" in bridge_ports, bridge_ports

    def guest_sees_it() -> bool:
        return nic.mac in ssh(site, key, GUEST, "ip -o link").stdout

    wait_for(guest_sees_it, 60, "the guest to see its new NIC")
    print(f"NIC hot-attach: operation done {attached:.1f} s after the API call")
    op = api.detach_nic("netvm", "lan2")
    client.wait_operation(op.id, timeout=120)
    wait_for(lambda: not guest_sees_it(), 60, "the guest to let the NIC go")
    assert nic.tap not in site.host.run(["bridge", "link"]).stdout


def _port_forward_reaches_the_guest(site: Site) -> None:
    forward = site.api.add_forward("netvm", PortForwardCreate(port=22, host_port=30022))
    assert (forward.host_port, forward.target) == (30022, GUEST)
    api = site.api
    # PAT'd traffic crosses the security group: allow the bridge's own address too.
    api.add_rule(
        "default",
        SecurityRuleCreate(
            direction="ingress", protocol="tcp", port_min=22, remote="198.19.40.1/32"
        ),
    )

    def through_pat() -> bool:
        return ssh_banner(site.host, "198.19.40.1", 30022)

    wait_for(through_pat, 30, "the port forward to reach the guest's SSH")


PAIR = ("198.19.40.21", "198.19.40.22")


def test_two_guests_get_their_leases_and_reach_each_other(site: Site, ssh_key: Path) -> None:
    """Two tiny guests (libvirt, TCG) on one bridged network: both get their reserved address
    from the agent's dnsmasq, and one reaches the other (ICMP, and TCP to its SSH server)."""
    api, cloud = site.api, site.cloud
    api.create_network(NetworkCreate(name="lan", cidr4="198.19.40.0/24", gateway4="198.19.40.1"))
    key = ssh_key.with_suffix(".pub").read_text().strip()
    vms, ops = [], []
    for name, address in zip(("pa", "pb"), PAIR, strict=True):
        created = cloud.client.create_instances(
            InstanceCreate(
                image="tiny", flavor="t1.micro", name=name, ssh_keys=[key],
                networks=[f"lan:ip={address}"],
            )
        )  # fmt: skip
        vms.append(created.instances[0])
        ops.append(created.operation.id)
    for op in ops:
        cloud.client.wait_operation(op, timeout=180)
    leases = site.state / "networks" / "lan.leases"

    def leased() -> bool:
        text = leases.read_text() if leases.exists() else ""
        return all(f"{vm.nics[0].mac} {vm.nics[0].ipv4} {vm.name}" in text for vm in vms)

    wait_for(leased, 150, f"both guests' DHCP leases\n{cloud.log('node')}")
    for vm in vms:
        wait_for(lambda vm=vm: "STRATUSLAB-TINY READY" in cloud.console(vm.id), 120, "ready")
    first, second = PAIR
    done = ssh(
        site,
        ssh_key,
        first,
        f"ip -4 addr show eth0; ping -c 2 -W 3 {second}; echo | nc -w 5 {second} 22 | head -c 7",
    )
    assert done.returncode == 0, done.stderr
    assert f"inet {first}/24" in done.stdout, "the first guest holds its reserved address"
    assert "2 packets received" in done.stdout, f"the first guest pings the second\n{done.stdout}"
    assert done.stdout.rstrip().endswith("SSH-2.0"), f"TCP to the second's SSH\n{done.stdout}"
    back = ssh(site, ssh_key, second, f"ip -4 addr show eth0; ping -c 1 -W 3 {first}")
    assert back.returncode == 0 and f"inet {second}/24" in back.stdout, back.stdout + back.stderr
    _deleted_member_leaves_remote_group_rules(site, vms[1].nics[0].tap, first)


def _deleted_member_leaves_remote_group_rules(site: Site, tap: str, address: str) -> None:
    """A rule naming the default group as remote: the second guest's ingress chain allows the
    first guest's address, until the first guest is deleted."""
    rule = SecurityRuleCreate(
        direction="ingress", protocol="tcp", port_min=7000, remote_group="default"
    )
    site.api.add_rule("default", rule)
    chain = ["nft", "list", "chain", "inet", "stratus_sg", f"ingress_{chain_suffix(tap)}"]
    allowed = f"ip saddr {address} tcp dport 7000 accept"

    def listed() -> bool | None:
        done = site.host.run(chain, check=False)
        return None if done.returncode != 0 else allowed in done.stdout

    wait_for(lambda: listed() is True, 30, f"the remote-group rule on the host\n{diagnose(site)}")
    site.cloud.client.delete_instance("pa")
    wait_for(
        lambda: listed() is False, 30, f"the deleted member to leave the rule\n{diagnose(site)}"
    )
