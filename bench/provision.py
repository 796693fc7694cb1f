"""Provisioning latency through the whole stack against a raw libvirt baseline, in one run.

(a) API call -> domain running: POST /api/v1/instances until its operation succeeds (the agent
    has defined and started the domain and reported it running); the base image is cached.
(b) raw baseline: `virsh create` of the same domain XML by hand (overlay and seed made first).
(c) API call -> console line: until the tiny appliance's READY line is read back through
    GET /api/v1/instances/{id}/console; next to it, the raw boot (b) to the same line in the
    log file.

Stack runs and raw runs alternate, so both see the same machine load. Prints median and p90
over --runs runs, the ratio a/b and the control-plane overhead a-b (target: median <= 150 ms).
Run as root on a host prepared by scripts/host-setup.sh:

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


def stack_once(cloud: Cloud, key: str, i: int) -> tuple[float, float]:
    """One instance through the API: seconds until running, and until its console line."""
    t0 = time.perf_counter()
    created = cloud.client.create_instances(
        InstanceCreate(image="tiny", flavor=FLAVOR[0], name=f"bench-{i}", ssh_keys=[key])
    )
    op = cloud.client.wait_operation(created.operation.id, timeout=120)
    t_run = time.perf_counter() - t0
    assert op.status == "succeeded", op.error
    inst_id = created.instances[0].id
    wait_for(lambda: READY_MARKER in cloud.console(inst_id), 180, "READY", interval=0.02)
    t_console = time.perf_counter() - t0
    kill = cloud.client.delete_instance(inst_id)
    cloud.client.wait_operation(kill.id, timeout=120)
    return t_run, t_console


def raw_once(base: Path, work: Path, key: str) -> tuple[float, float]:
    """The same domain by hand: seconds for `virsh create`, and until the console line."""
    uid = str(uuid.uuid4())
    d = work / uid
    d.mkdir(mode=0o755)
    root = d / "root.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(root)],
        check=True,
    )
    seed = d / "seed.iso"
    write_seed_iso(build_nocloud(instance_id=uid, hostname="raw", ssh_keys=[key]), seed)
    log = d / "console.log"
    spec = DomainSpec(
        uuid=uid,
        name=f"stratus-bench-{uid}",
        vcpus=FLAVOR[1],
        memory_mib=FLAVOR[2],
        disks=(
            DiskSpec(path=root, target="vda", boot_order=1),
            DiskSpec(path=seed, format="raw", target="vdb", readonly=True),
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
            lambda: log.exists() and READY_MARKER in log.read_text(errors="replace"),
            180,
            "READY",
            interval=0.02,
        )
        t_console = time.perf_counter() - t0
    finally:
        subprocess.run([*VIRSH, "destroy", spec.name], capture_output=True, check=False)
    return t_create, t_console


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
    (root / "raw").mkdir(mode=0o755)
    cloud = Cloud(root / "cloud", ssh_port_base=24000)
    a, b, c, c_raw = [], [], [], []
    try:
        cloud.start_controller()
        cloud.start_node()
        wait_for(lambda: len(cloud.client.list_hosts()) == 1, 60, "the node to join")
        cloud.client.upload_image(image, "tiny")
        print(f"hypervisor: {cloud.client.list_hosts()[0].hypervisor}; {args.runs} runs each")
        stack_once(cloud, key, 0)  # warms the node's image cache; not counted
        base = next((cloud.state / "images").glob("*.qcow2"))
        for i in range(1, args.runs + 1):
            t_run, t_console = stack_once(cloud, key, i)
            t_create, t_raw_console = raw_once(base, root / "raw", key)
            a.append(t_run)
            c.append(t_console)
            b.append(t_create)
            c_raw.append(t_raw_console)
            print(
                f"  run {i:2}: stack running {t_run * 1000:7.1f} ms, console {t_console:5.2f} s"
                f" | raw virsh create {t_create * 1000:7.1f} ms, console {t_raw_console:5.2f} s",
                flush=True,
            )
    finally:
        cloud.close()
        shutil.rmtree(root, ignore_errors=True)
    report(a, b, c, c_raw)


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
    verdict = "met" if overhead <= 150 else "NOT met"
    print(f"control-plane overhead a-b (median): {overhead:.1f} ms  (target <= 150 ms: {verdict})")
    c_med, c_raw_med = statistics.median(c), statistics.median(c_raw)
    print(
        f"console line overhead c-raw (median): {(c_med - c_raw_med) * 1000:.0f} ms "
        f"(ratio {c_med / c_raw_med:.2f})"
    )
    print("anchor: OpenStack's published 1,000-node test takes 13 s from API call to ACTIVE")


if __name__ == "__main__":
    main()
