"""Provisioning latency through the whole stack against a raw libvirt baseline, in one run.

(a) API call -> domain running: POST /api/v1/instances until its operation succeeds (the agent
    has defined and started the domain and reported it running); the base image is cached.
(b) raw baseline: `virsh create` of the same domain XML by hand (overlay and seed made first).
(c) API call -> console line: until the tiny appliance's READY line is read back through
    GET /api/v1/instances/{id}/console; next to it, the raw boot (b) to the same line in the
    log file.

Prints median and p90 over --runs runs, the ratio a/b and the control-plane overhead a-b
(target: median <= 150 ms). Run as root on a host prepared by scripts/host-setup.sh:

    .venv/bin/python bench/provision.py [--runs 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stratuslab.appliances.tiny import READY_MARKER, build_tiny
from stratuslab.context.iso import write_seed_iso
from stratuslab.context.nocloud import build_nocloud
from stratuslab.drivers.base import DiskSpec, DomainSpec, PortForward
from stratuslab.drivers.libvirt.domain_xml import domain_xml
from stratuslab.schemas.instances import InstanceCreate
from stratuslab.types import Hypervisor
from tests.functional.cloud import TINY_CACHE, Cloud, free_port, wait_for

VIRSH = ["virsh", "-q", "-c", "qemu:///system"]
FLAVOR = ("t1.micro", 1, 512)


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered), p90


def through_the_stack(cloud: Cloud, key: str, runs: int) -> tuple[list[float], list[float]]:
    running, console = [], []
    for i in range(runs + 1):  # the first run warms the image cache and is not counted
        t0 = time.perf_counter()
        created = cloud.client.create_instances(
            InstanceCreate(image="tiny", flavor=FLAVOR[0], name=f"bench-{i}", ssh_keys=[key])
        )
        op = cloud.client.wait_operation(created.operation.id, timeout=120)
        t_run = time.perf_counter() - t0
        assert op.status == "succeeded", op.error
        inst_id = created.instances[0].id
        wait_for(
            lambda iid=inst_id: READY_MARKER in cloud.console(iid), 180, "READY", interval=0.02
        )
        t_console = time.perf_counter() - t0
        if i > 0:
            running.append(t_run)
            console.append(t_console)
        print(
            f"  stack run {i}: running {t_run * 1000:7.1f} ms, console line {t_console:6.2f} s"
            + ("  (warm-up)" if i == 0 else ""),
            flush=True,
        )
        kill = cloud.client.delete_instance(inst_id)
        cloud.client.wait_operation(kill.id, timeout=120)
    return running, console


def raw_virsh(base: Path, work: Path, key: str, runs: int) -> tuple[list[float], list[float]]:
    created, console = [], []
    for i in range(runs):
        uid = str(uuid.uuid4())
        d = work / uid
        d.mkdir(mode=0o755)
        root = d / "root.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(root)],
            check=True,
        )
        write_seed_iso(
            build_nocloud(instance_id=uid, hostname=f"raw-{i}", ssh_keys=[key]), d / "seed.iso"
        )
        log = d / "console.log"
        spec = DomainSpec(
            uuid=uid,
            name=f"stratus-bench-{uid}",
            vcpus=FLAVOR[1],
            memory_mib=FLAVOR[2],
            disks=(
                DiskSpec(path=root, target="vda", boot_order=1),
                DiskSpec(path=d / "seed.iso", format="raw", target="vdb", readonly=True),
            ),
            console_log=log,
            hypervisor=Hypervisor.QEMU,
            port_forwards=(PortForward(host_port=free_port()),),
        )
        xml = d / "domain.xml"
        xml.write_text(domain_xml(spec))
        t0 = time.perf_counter()
        subprocess.run([*VIRSH, "create", str(xml)], check=True, capture_output=True)
        t_create = time.perf_counter() - t0
        try:
            wait_for(
                lambda f=log: f.exists() and READY_MARKER in f.read_text(errors="replace"),
                180,
                "READY",
                interval=0.02,
            )
            t_console = time.perf_counter() - t0
        finally:
            subprocess.run([*VIRSH, "destroy", spec.name], capture_output=True, check=False)
        created.append(t_create)
        console.append(t_console)
        print(
            f"  raw run {i + 1}: virsh create {t_create * 1000:7.1f} ms, "
            f"console line {t_console:6.2f} s",
            flush=True,
        )
    return created, console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    image = build_tiny(TINY_CACHE / "tiny.qcow2", cache_dir=TINY_CACHE / "tiny")
    root = Path(tempfile.mkdtemp(prefix="stratus-bench-", dir="/var/tmp"))
    root.chmod(0o755)
    keyfile = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keyfile)], check=True)
    key = keyfile.with_suffix(".pub").read_text().strip()
    (root / "cloud").mkdir(mode=0o755)
    cloud = Cloud(root / "cloud", ssh_port_base=24000)
    try:
        cloud.start_controller()
        cloud.start_node()
        wait_for(lambda: len(cloud.client.list_hosts()) == 1, 60, "the node to join")
        cloud.client.upload_image(image, "tiny")
        hypervisor = cloud.client.list_hosts()[0].hypervisor
        print(f"(a)+(c) through the stack ({args.runs} runs, hypervisor {hypervisor}):")
        stack_run, stack_console = through_the_stack(cloud, key, args.runs)
        base = next((cloud.state / "images").glob("*.qcow2"))
        raw_dir = root / "raw"
        raw_dir.mkdir(mode=0o755)
        print(f"(b) raw `virsh create` of the same domain XML ({args.runs} runs):")
        raw_create, raw_console = raw_virsh(base, raw_dir, key, args.runs)
    finally:
        cloud.close()
        shutil.rmtree(root, ignore_errors=True)
    report(stack_run, raw_create, stack_console, raw_console)


def report(a: list[float], b: list[float], c: list[float], c_raw: list[float]) -> None:
    rows = [
        ("(a) API call -> domain running", a),
        ("(b) raw virsh create", b),
        ("(c) API call -> console line", c),
        ("    raw virsh create -> console line", c_raw),
    ]
    print(f"\n{'measure':40} {'median':>10} {'p90':>10}")
    for label, values in rows:
        med, p90 = stats(values)
        print(f"{label:40} {med * 1000:8.1f}ms {p90 * 1000:8.1f}ms")
    a_med, b_med = statistics.median(a), statistics.median(b)
    overhead = (a_med - b_med) * 1000
    print(f"\nratio a/b (median): {a_med / b_med:.2f}")
    print(
        f"control-plane overhead a-b (median): {overhead:.1f} ms  "
        f"(target <= 150 ms: {'met' if overhead <= 150 else 'NOT met'})"
    )
    c_med, c_raw_med = statistics.median(c), statistics.median(c_raw)
    print(
        f"console line overhead c-raw (median): {(c_med - c_raw_med) * 1000:.0f} ms "
        f"(ratio {c_med / c_raw_med:.2f})"
    )
    print("anchor: OpenStack's published 1,000-node test takes 13 s from API call to ACTIVE")


if __name__ == "__main__":
    main()
