"""Host networking latency with the Linux driver, all inside throwaway network namespaces.

(a) create a network: bridge + address + dnsmasq answering (``ensure_network`` of a new one)
(b) attach a NIC: create a tap, plug it into the bridge, apply the default security group
(c) change a security group on a running port, with ``--ports`` other ports already bound
(d) DHCP lease: busybox udhcpc in an "instance" namespace, from start to bound
(e) with ``--guest``: a tiny-appliance guest under TCG, from QEMU start to its lease
(f) with ``--cloud``: the same through the controller: the real app (SQLite) and an
    in-process agent (fake compute driver, the Linux host driver in the namespace): a network
    and a first instance on it until the host carries both; a NIC hot-attach until its
    operation succeeds; a security-group rule until the host applied it; an agent pass
    with nothing to change (``--cloud N``: N instances with a NIC each)

Prints median and p90 over ``--runs``. Run as root (iproute2, nftables, dnsmasq, busybox):

    .venv/bin/python bench/network.py [--runs 20] [--ports 100] [--guest 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stratuslab.drivers.network.base import (
    DEFAULT_SECURITY_GROUP,
    DhcpHost,
    HostNetworkSpec,
    SecuredPort,
)
from stratuslab.drivers.network.linux import LinuxNetworkDriver
from tests.netns import NetnsLab, netns_lab

CLIENT = DhcpHost("02:00:c6:13:09:0a", IPv4Address("198.19.9.10"))
GUEST = DhcpHost("02:00:c6:13:09:14", IPv4Address("198.19.9.20"))


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered), p90


def report(label: str, values: list[float]) -> None:
    median, p90 = stats(values)
    print(
        f"{label:<44} median {1000 * median:8.1f} ms   p90 {1000 * p90:8.1f} ms   n={len(values)}"
    )


def spec(name: str = "bench", *hosts: DhcpHost) -> HostNetworkSpec:
    return HostNetworkSpec(
        name=name,
        bridge=f"sbr-{name}",
        address=IPv4Interface("198.19.9.1/24"),
        gateway=IPv4Address("198.19.9.1"),
        dhcp_hosts=hosts,
    )


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_create(driver: LinuxNetworkDriver, runs: int) -> list[float]:
    values = []
    for _ in range(runs):
        values.append(timed(lambda: driver.ensure_network(spec("bench", CLIENT))))
        assert driver.status("bench").dhcp_running
        driver.remove_network("bench")
    return values


def bench_attach(driver: LinuxNetworkDriver, runs: int) -> list[float]:
    driver.ensure_network(spec("bench", CLIENT))
    port = SecuredPort("st-bench0", GUEST.mac, (GUEST.ipv4,))

    def attach() -> None:
        driver.plug("bench", port.ifname, create_tap=True)
        driver.apply_security_group(port, DEFAULT_SECURITY_GROUP)

    values = []
    for _ in range(runs):
        values.append(timed(attach))
        driver.remove_security_group(port.ifname)
        driver.unplug(port.ifname)
    return values


def bench_sg_change(driver: LinuxNetworkDriver, runs: int, ports: int) -> list[float]:
    for n in range(ports):
        other = SecuredPort(f"p{n}", f"02:00:c6:14:{n // 256:02x}:{n % 256:02x}")
        other = SecuredPort(
            other.ifname, other.mac, (IPv4Address(f"198.20.{n // 250}.{n % 250 + 1}"),)
        )
        driver.apply_security_group(other, DEFAULT_SECURITY_GROUP)
    port = SecuredPort("st-bench1", CLIENT.mac, (CLIENT.ipv4,))
    return [
        timed(lambda: driver.apply_security_group(port, DEFAULT_SECURITY_GROUP))
        for _ in range(runs)
    ]


def bench_lease(lab: NetnsLab, driver: LinuxNetworkDriver, runs: int) -> list[float]:
    host = lab.namespaces[0]
    driver.ensure_network(spec("bench", CLIENT))
    client = lab.instance(host, "vi-bench", "cli", mac=CLIENT.mac)
    driver.plug("bench", "vi-bench")
    values = []
    for _ in range(runs):
        client.ip("addr", "flush", "dev", "eth0")
        args = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1"]
        started = time.perf_counter()
        done = client.run([*args, "-s", "/bin/true"], check=False)
        values.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr
    driver.unplug("vi-bench")
    return values


def bench_guest(lab: NetnsLab, driver: LinuxNetworkDriver, runs: int, work: Path) -> list[float]:
    from stratuslab.appliances.tiny import build_tiny
    from tests.functional.cloud import TINY_CACHE

    image = build_tiny(work / "tiny.qcow2", cache_dir=TINY_CACHE / "tiny")
    host = lab.namespaces[0]
    driver.ensure_network(spec("bench", CLIENT, GUEST))
    leases = driver.state_dir / "networks" / "bench.leases"
    values = []
    for run in range(runs):
        driver.plug("bench", "st-guest0", create_tap=True)
        overlay = work / f"guest-{run}.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(image),
                "-F",
                "qcow2",
                str(overlay),
            ],
            check=True,
        )
        leases.write_text("")  # forget the last run's lease (dnsmasq keeps it in memory too)
        subprocess.run(["kill", "-HUP", str(driver._dnsmasq_pid("bench"))], check=True)
        args = [
            "qemu-system-x86_64", "-accel", "tcg,tb-size=128", "-m", "192", "-nographic",
            "-serial", "null", "-monitor", "none", "-drive", f"file={overlay},if=virtio",
            "-netdev", "tap,id=n0,ifname=st-guest0,script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={GUEST.mac},romfile=",
        ]  # fmt: skip
        started = time.perf_counter()
        qemu = host.popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        while GUEST.mac not in leases.read_text() and time.perf_counter() - started < 180:
            time.sleep(0.1)
        values.append(time.perf_counter() - started)
        qemu.kill()
        qemu.wait()
        driver.unplug("st-guest0")
    return values


def bench_cloud(lab: NetnsLab, runs: int, instances: int) -> None:
    """(f): the control plane around the driver; prints its own lines."""
    import tempfile

    from fastapi.testclient import TestClient

    from stratuslab.agent.networks import AgentNetworks, FakeNics
    from stratuslab.api.app import build_ctx, create_app
    from stratuslab.config import ControllerSettings
    from stratuslab.drivers.fake import FakeComputeDriver
    from stratuslab.services import auth, flavors
    from tests.conftest import make_qcow2
    from tests.integration.test_lifecycle import start_node

    work = Path(tempfile.mkdtemp(prefix="bench-net-"))
    settings = ControllerSettings(data_dir=work / "data", database_url=f"sqlite:///{work}/c.db")
    ctx = build_ctx(settings)
    with ctx.uow() as s:
        user, project = auth.ensure_admin(s)
        flavors.ensure_builtin(s, user.id, project.id)
        token = auth.issue_token(s, user, project, "bench")
    host = lab.namespace("cloud")
    driver = LinuxNetworkDriver(
        state_dir=lab.state_dir("cloud"), netns=host.name, manage_sysctls=True
    )
    with TestClient(create_app(settings, ctx=ctx, background=False)) as api:
        api.headers["Authorization"] = f"Bearer {token}"
        disk = make_qcow2(work / "disk.qcow2", "16M")
        api.post("/api/v1/images", params={"name": "base"}, content=disk.read_bytes())
        join = api.post("/api/v1/hosts/tokens").json()["token"]
        big = FakeComputeDriver(hostname="node-1", vcpus=4096, memory_mib=1 << 24)
        node = start_node(api, join, driver=big)
        node.agent.reconciler.networks = AgentNetworks(driver, FakeNics())
        _cloud_runs(api, node, driver, runs, instances)
        node.link.close()
    ctx.close()


def _cloud_runs(api: Any, node: Any, driver: LinuxNetworkDriver, runs: int, count: int) -> None:
    from stratuslab.drivers.network.base import tap_name

    created, attached, rules = [], [], []
    for run in range(runs):
        name = f"c{run}"
        started = time.perf_counter()
        body = {"name": name, "cidr4": f"198.19.{100 + run}.0/24"}
        made = api.post("/api/v1/networks", json={**body, "gateway4": f"198.19.{100 + run}.1"})
        assert made.status_code == 201, made.text
        resp = api.post(
            "/api/v1/instances",
            json={"image": "base", "flavor": "t1.micro", "name": f"vm{run}", "networks": [name]},
        )
        assert resp.status_code == 202, resp.text
        vm = resp.json()["instances"][0]
        node.settle(partial(_carries, driver, name))
        created.append(time.perf_counter() - started)
        started = time.perf_counter()
        op = api.post(f"/api/v1/instances/{vm['id']}/nics", json={"network": name}).json()
        node.settle(partial(_finished, api, op["id"]))
        attached.append(time.perf_counter() - started)
        started = time.perf_counter()
        rule = {"direction": "ingress", "protocol": "tcp", "port_min": 1000 + run}
        api.post("/api/v1/security-groups/default/rules", json=rule)
        node.settle(partial(_has_port, driver, tap_name(vm["id"], 0), 1000 + run))
        rules.append(time.perf_counter() - started)
    report("(f) cloud: network + first instance on host", created)
    report("(f) cloud: NIC hot-attach, API -> op done", attached)
    report("(f) cloud: SG rule, API -> applied on host", rules)
    for i in range(count):
        api.post(
            "/api/v1/instances",
            json={"image": "base", "flavor": "t1.micro", "name": f"many{i}", "networks": ["c0"]},
        )
    node.settle()
    node.settle()
    passes = [timed(lambda: node.agent.step(wait=0)) for _ in range(max(3, runs // 2))]
    report(f"(f) cloud: idle agent pass, {count + 2 * runs} NICs", passes)


def _carries(driver: LinuxNetworkDriver, name: str) -> bool:
    return name in driver.networks()


def _finished(api: Any, op_id: str) -> bool:
    return bool(api.get(f"/api/v1/operations/{op_id}").json()["status"] != "running")


def _has_port(driver: LinuxNetworkDriver, tap: str, port: int) -> bool:
    return any(rule.port_min == port for rule in driver.security_group(tap) or ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--ports", type=int, default=100, help="other bound ports for (c)")
    parser.add_argument("--guest", type=int, default=0, help="tiny-guest boots for (e)")
    parser.add_argument(
        "--cloud", type=int, default=-1, help="(f) through the controller, with N more instances"
    )
    args = parser.parse_args()
    with netns_lab() as lab:
        host = lab.namespace("bench")
        driver = LinuxNetworkDriver(
            state_dir=lab.state_dir("bench"), netns=host.name, manage_sysctls=True
        )
        report("(a) create network (bridge + dnsmasq)", bench_create(driver, args.runs))
        report("(b) attach NIC (tap + plug + default SG)", bench_attach(driver, args.runs))
        report("(d) DHCP lease, udhcpc in a namespace", bench_lease(lab, driver, args.runs))
        label = f"(c) SG change with {args.ports} other ports"
        report(label, bench_sg_change(driver, args.runs, args.ports))
        if args.guest:
            work = lab.state_dir("guest")
            report(
                "(e) tiny guest: QEMU start -> DHCP lease",
                bench_guest(lab, driver, args.guest, work),
            )
        for name in driver.networks():
            for port in driver.status(name).ports:
                driver.unplug(port)
            driver.remove_network(name)
        if args.cloud >= 0:
            bench_cloud(lab, min(args.runs, 50), args.cloud)


if __name__ == "__main__":
    main()
