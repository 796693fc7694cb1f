"""Boot time to SSH-ready through the whole cloud, next to the same boot with plain QEMU.

For the tiny appliance and debian-12-base: (a) from the API call (POST /api/v1/instances) until
`ssh root@... true` succeeds with the injected key; (b) the raw baseline: the same disk (a qcow2
overlay on the same base) and the same NoCloud seed booted by hand with
`qemu-system-x86_64 -accel tcg` (or kvm when the node uses it), until SSH answers. Prints
medians and the overhead (a - b) / b (target <= 10 %).

    .venv/bin/python bench/boot.py [--runs 5] [--debian-runs 3] [--skip-debian]
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

from stratuslab.appliances.builder import build_recipe
from stratuslab.appliances.recipe import resolve_recipe
from stratuslab.appliances.tiny import build_tiny
from stratuslab.context.iso import write_seed_iso
from stratuslab.context.nocloud import build_nocloud
from stratuslab.schemas.instances import InstanceCreate
from tests.functional.cloud import TINY_CACHE, Cloud, free_port, wait_for

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR"]  # fmt: skip


def ssh_ready(port: int, key: Path) -> bool:
    try:
        proc = subprocess.run(
            ["ssh", "-i", str(key), "-p", str(port), *SSH_OPTS, "root@127.0.0.1", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def through_cloud(cloud: Cloud, image: str, flavor: str, key: Path, runs: int) -> list[float]:
    times = []
    pub = key.with_suffix(".pub").read_text()
    for i in range(runs):
        t0 = time.perf_counter()
        created = cloud.client.create_instances(
            InstanceCreate(image=image, flavor=flavor, name=f"{image}-{i}", ssh_keys=[pub])
        )
        port = int(created.instances[0].ssh_port or 0)
        wait_for(lambda p=port: ssh_ready(p, key), 400, "ssh", interval=0.25)
        times.append(time.perf_counter() - t0)
        print(f"  {image} via the cloud, run {i + 1}: {times[-1]:6.1f} s", flush=True)
        op = cloud.client.delete_instance(created.instances[0].id)
        cloud.client.wait_operation(op.id, timeout=120)
    return times


def raw_qemu(base: Path, memory: int, key: Path, work: Path, runs: int, accel: str) -> list[float]:
    times = []
    for i in range(runs):
        d = work / f"raw-{uuid.uuid4().hex[:8]}"
        d.mkdir()
        overlay = d / "root.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(base), str(overlay)], check=True)  # fmt: skip
        seed = d / "seed.iso"
        write_seed_iso(
            build_nocloud(
                instance_id=str(uuid.uuid4()),
                hostname=f"raw-{i}",
                ssh_keys=[key.with_suffix(".pub").read_text()],
            ),
            seed,
        )
        port = free_port()
        args = [
            "qemu-system-x86_64", "-accel", f"{accel}" + (",tb-size=128" if accel == "tcg" else ""),
            "-m", str(memory), "-smp", "1", "-nographic", "-serial", "null", "-monitor", "none",
            "-drive", f"file={overlay},if=virtio",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda p=port: ssh_ready(p, key), 400, "ssh", interval=0.25)
            times.append(time.perf_counter() - t0)
        finally:
            proc.kill()
            proc.wait()
        print(f"  {base.name} with plain QEMU, run {i + 1}: {times[-1]:6.1f} s", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--debian-runs", type=int, default=3)
    parser.add_argument("--skip-debian", action="store_true")
    args = parser.parse_args()

    images = {"tiny": (build_tiny(TINY_CACHE / "tiny.qcow2", cache_dir=TINY_CACHE / "tiny"),
                       "t1.micro", 512, args.runs)}  # fmt: skip
    if not args.skip_debian:
        work = Path(tempfile.mkdtemp(prefix="stratus-bench-d12-"))
        debian = build_recipe(resolve_recipe("debian-12-base"), work / "d12.qcow2",
                              cache_dir=TINY_CACHE / "recipes").image  # fmt: skip
        images["debian-12-base"] = (debian, "m1.small", 1536, args.debian_runs)
    root = Path(tempfile.mkdtemp(prefix="stratus-bench-", dir="/var/tmp"))
    root.chmod(0o755)
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (root / "cloud").mkdir(mode=0o755)
    cloud = Cloud(root / "cloud", ssh_port_base=26000)
    results: dict[str, tuple[list[float], list[float]]] = {}
    try:
        cloud.start_controller()
        cloud.start_node()
        wait_for(lambda: len(cloud.client.list_hosts()) == 1, 60, "the node to join")
        accel = "kvm" if cloud.client.list_hosts()[0].hypervisor == "kvm" else "tcg"
        for name, (path, flavor, memory, runs) in images.items():
            cloud.client.upload_image(path, name)
            stack = through_cloud(cloud, name, flavor, key, runs)
            base = next(p for p in (cloud.state / "images").iterdir() if p.suffix == ".qcow2"
                        and p.stat().st_size == path.stat().st_size)  # fmt: skip
            raw = raw_qemu(base, memory, key, root, runs, accel)
            results[name] = (stack, raw)
    finally:
        cloud.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'image':16} {'via cloud (median)':>20} {'plain QEMU (median)':>20} {'overhead':>9}")
    for name, (stack, raw) in results.items():
        a, b = statistics.median(stack), statistics.median(raw)
        print(f"{name:16} {a:18.1f} s {b:18.1f} s {100 * (a - b) / b:8.1f} %")
    print("target: overhead <= 10 % of the raw boot (TCG here; see docs for KVM on real hosts)")


if __name__ == "__main__":
    main()
