"""Volume clone time against a full copy, and hot-plug latency into a running guest, in one run.

(a) clone of a filled 1 GiB and 10 GiB volume, per strategy of the file backend:
    * reflink (raw and qcow2 on an XFS loop filesystem this script makes),
    * qcow2 backing layer (freeze + two overlays; on the host's filesystem, reflinks off),
    next to the full-copy baselines measured in the same run: ``cp --reflink=never`` of the
    raw file and ``qemu-img convert`` of the qcow2 file. Target: clone <= 100 ms at both sizes.
(b) attach latency: ``attach_volume`` call until the disk shows up in ``/sys/block`` of a
    running tiny appliance (a loop inside the guest, started over SSH before the call, prints
    when the serial appears), for a file volume and an iSCSI volume (private tgtd); and
    detach latency (``detach_volume`` returns once the guest released the disk).
(c) attach latency through the API: ``POST /volumes/{id}/attach`` until the disk shows up in
    the guest (same in-guest loop), and until the operation succeeded, through a real
    controller and node agent (processes) with the agent's file pool and its iSCSI pool (the
    agent starts its own tgtd); a detach between runs.

Prints median and p90 per case, and the ratio baseline / clone. Run as root:

    .venv/bin/python bench/volumes.py [--runs 10] [--baseline-runs 3] [--sizes 1,10]
        [--attach-runs 5] [--api-runs 5] [--no-clones] [--no-attach]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stratuslab.appliances.tiny import READY_MARKER, build_tiny
from stratuslab.client.volumes import VolumesAPI
from stratuslab.drivers.libvirt import LibvirtComputeDriver
from stratuslab.drivers.storage.base import VolumeBackend
from stratuslab.drivers.storage.file import FileVolumeBackend
from stratuslab.drivers.storage.iscsi import IscsiVolumeBackend
from stratuslab.schemas.instances import InstanceCreate
from stratuslab.schemas.volumes import VolumeCreate
from stratuslab.types import Hypervisor
from tests.contract.test_volume_backend import (
    free_control_port,
    free_port,
    loop_filesystem,
    private_tgtd,
)
from tests.functional.cloud import TINY_CACHE, Cloud, wait_for
from tests.functional.test_volumes_hotplug import CACHE, TEST_ROOT, Guest, find_device_script
from tests.functional.test_volumes_hotplug import tiny_guest as tiny_guest_cm

GiB = 1 << 30
HOST = "127.0.0.1"
POOL = "volume_free_bytes"


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered), p90


def report(label: str, values: list[float]) -> tuple[float, float]:
    median, p90 = stats(values)
    print(f"  {label:<52} median {median * 1000:9.1f} ms   p90 {p90 * 1000:9.1f} ms", end="")
    print(f"  (n={len(values)})")
    return median, p90


def timed(action: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    action()
    return time.perf_counter() - t0


def fill(path: Path, size: int) -> None:
    """Write ``size`` bytes of non-zero data (so copies really copy)."""
    block = os.urandom(4 << 20)
    with path.open("r+b") as f:
        for offset in range(0, size, len(block)):
            f.write(block[: min(len(block), size - offset)])
        f.flush()
        os.fsync(f.fileno())


def filled_volume(backend: FileVolumeBackend, size: int, raw_source: Path | None) -> str:
    volume_id = str(uuid.uuid4())
    if backend.format == "raw":
        backend.create(volume_id, size)
        fill(backend.data_path(volume_id), size)
    else:
        backend.create(volume_id, size, from_image=raw_source)
    return volume_id


# -- (a) clones ------------------------------------------------------------------------------


def bench_clones(work: Path, sizes: list[int], runs: int, baseline_runs: int) -> None:
    with loop_filesystem("xfs", work / "xfs", size_mib=(3 * max(sizes) + 4) * 1024) as xfs:
        reflink_raw = FileVolumeBackend(xfs / "raw", format="raw")
        reflink_qcow2 = FileVolumeBackend(xfs / "qcow2", format="qcow2")
        layers = FileVolumeBackend(work / "layers", format="qcow2", reflink=False)
        assert reflink_raw.features.live_snapshot, "XFS should have reflinks"
        for gib in sizes:
            size = gib * GiB
            print(f"\n{gib} GiB volume, filled with data")
            raw = filled_volume(reflink_raw, size, None)
            raw_path = reflink_raw.data_path(raw)
            qcow2 = filled_volume(reflink_qcow2, size, raw_path)
            layered = filled_volume(layers, size, raw_path)
            medians = {
                "reflink raw": clone_runs(reflink_raw, raw, runs),
                "reflink qcow2": clone_runs(reflink_qcow2, qcow2, runs),
                "qcow2 backing layer": clone_runs(layers, layered, runs),
            }
            source = layers.data_path(layered)
            cp_command = ["cp", "--reflink=never", "--sparse=never", str(raw_path)]
            cp = baseline(baseline_runs, cp_command, xfs)
            convert_command = ["qemu-img", "convert", "-O", "qcow2", str(source)]
            convert = baseline(baseline_runs, convert_command, work)
            print(f"  {'baseline cp --reflink=never (raw)':<52}", end="")
            print(f" median {cp * 1000:9.1f} ms")
            print(f"  {'baseline qemu-img convert (qcow2)':<52}", end="")
            print(f" median {convert * 1000:9.1f} ms")
            for name, (median, p90) in medians.items():
                base = cp if "raw" in name else convert
                verdict = "ok" if median <= 0.1 else "median ABOVE the 100 ms target"
                if median <= 0.1 < p90:
                    verdict += " (p90 above 100 ms)"
                print(f"  ratio baseline/{name:<28} {base / median:9.0f}x   {verdict}")
            for backend in (reflink_raw, reflink_qcow2, layers):
                for info in backend.list_volumes():
                    backend.delete(info.volume_id)


def clone_runs(backend: FileVolumeBackend, volume_id: str, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        dst = str(uuid.uuid4())
        times.append(timed(lambda d=dst: backend.clone(volume_id, d)))  # type: ignore[misc]
        backend.delete(dst)
    return report(f"clone, {backend.format}, {strategy(backend)}", times)


def strategy(backend: FileVolumeBackend) -> str:
    if backend.features.live_snapshot:
        return "reflink"
    return "backing layer" if backend.format == "qcow2" else "full copy"


def baseline(runs: int, command: list[str], where: Path) -> float:
    """Median time of ``command + [destination]`` (a full copy), synced, in ``where``."""
    times = []
    for _ in range(runs):
        dst = where / f"baseline-{uuid.uuid4().hex[:8]}"
        times.append(timed(lambda d=dst: subprocess.run([*command, str(d)], check=True)))  # type: ignore[misc]
        subprocess.run(["sync", "-f", str(dst)], check=True)
        dst.unlink()
    return statistics.median(times)


# -- (b) attach latency ----------------------------------------------------------------------


def bench_attach(work: Path, runs: int) -> None:
    driver = LibvirtComputeDriver("qemu:///system", hypervisor=Hypervisor.QEMU)
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    image = build_tiny(work / "tiny.qcow2", cache_dir=CACHE)
    with ExitStack() as stack:
        tgtd = stack.enter_context(private_tgtd(work / "tgtd.log"))
        backends: dict[str, VolumeBackend] = {
            "file (qcow2)": FileVolumeBackend(work / "attach-file"),
            "iscsi (tgtd, QEMU initiator)": IscsiVolumeBackend(
                work / "attach-iscsi", portal_port=tgtd.portal_port, control_port=tgtd.control_port
            ),
        }
        guest = stack.enter_context(tiny_guest_cm(driver, image, key, work))
        print("\nhot-plug into a running tiny appliance (TCG)")
        for name, backend in backends.items():
            volume_id = backend.create(str(uuid.uuid4()), 64 << 20).volume_id
            attachment = backend.export(volume_id, HOST).attachment(0)
            attach, detach = [], []
            for _ in range(runs):
                attach.append(attach_latency(guest, driver, attachment, volume_id))
                detach.append(timed(lambda a=attachment: driver.detach_volume(guest.uuid, a)))  # type: ignore[misc]
            report(f"attach -> in /sys/block, {name}", attach)
            report(f"detach (guest released), {name}", detach)
            backend.unexport(volume_id, HOST)
            backend.delete(volume_id)
    driver.close()


def attach_latency(
    guest: Guest, driver: LibvirtComputeDriver, attachment: object, vol: str
) -> float:
    script = (
        f'echo go; while [ -z "$({find_device_script(vol)})" ]; do usleep 5000; done; echo found'
    )
    waiter = subprocess.Popen(guest.ssh_args(script), stdout=subprocess.PIPE, text=True)
    assert waiter.stdout is not None
    assert waiter.stdout.readline().strip() == "go"
    t0 = time.perf_counter()
    driver.attach_volume(guest.uuid, attachment)  # type: ignore[arg-type]
    line = waiter.stdout.readline().strip()
    elapsed = time.perf_counter() - t0
    waiter.wait(timeout=30)
    assert line == "found", line
    return elapsed


# -- (c) attach latency through the API ------------------------------------------------------


def bench_api_attach(runs: int) -> None:
    """``POST /volumes/{id}/attach`` until the disk is in the guest's ``/sys/block``, through
    a real controller and node agent (processes), for the agent's file and iSCSI pools."""
    print("\nhot-plug through the API (controller + agent processes, tiny appliance, TCG)")
    image = build_tiny(TINY_CACHE / "tiny.qcow2", cache_dir=TINY_CACHE / "tiny")
    for pool, env in (
        ("file (qcow2)", {}),
        ("iscsi (agent's own tgtd)", {
            "STRATUS_NODE_VOLUME_BACKEND": "iscsi",
            "STRATUS_NODE_VOLUME_PORTAL_PORT": str(free_port()),
            "STRATUS_NODE_VOLUME_TGTD_CONTROL_PORT": str(free_control_port()),
        }),
    ):  # fmt: skip
        with api_cloud(image, env) as (cloud, key, port):
            api = VolumesAPI(cloud.client)
            made = api.create(VolumeCreate(name="bench", size_gib=0.0625))
            cloud.client.wait_operation(made.operation.id, timeout=120)
            vol = made.volume.id
            to_guest, to_done = [], []
            for _ in range(runs):
                waiter = subprocess.Popen(
                    guest_ssh(port, key, wait_script(vol, present=True)),
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert waiter.stdout is not None
                assert waiter.stdout.readline().strip() == "go"
                t0 = time.perf_counter()
                op = api.attach("bench", "vm")
                line = waiter.stdout.readline().strip()
                to_guest.append(time.perf_counter() - t0)
                waiter.wait(timeout=30)
                assert line == "found", line
                done = cloud.client.wait_operation(op.id, timeout=120)
                to_done.append(time.perf_counter() - t0)
                assert done.status == "succeeded", done.error
                detached = cloud.client.wait_operation(api.detach("bench").id, timeout=120)
                assert detached.status == "succeeded", detached.error
                gone = subprocess.run(
                    guest_ssh(port, key, wait_script(vol, present=False)),
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                assert "found" in gone.stdout, gone.stderr
            report(f"API attach -> in /sys/block, {pool}", to_guest)
            report(f"API attach -> operation succeeded, {pool}", to_done)


@contextmanager
def api_cloud(image: Path, env: dict[str, str]) -> Iterator[tuple[Cloud, Path, int]]:
    """A controller and an agent (with ``env``) running one tiny instance ``vm``."""
    root = Path(tempfile.mkdtemp(prefix="vbench-cloud-", dir="/var/tmp"))
    root.chmod(0o755)
    cloud = Cloud(root, ssh_port_base=24000 + random.randrange(40) * 50)
    cloud.env.update(env)
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    try:
        cloud.start_controller()
        cloud.start_node()
        wait_for(lambda: len(cloud.client.list_hosts()) == 1, 90, "the node to join")
        wait_for(lambda: POOL in cloud.client.list_hosts()[0].usage, 60, "the volume pool")
        cloud.client.upload_image(image, "tiny")
        created = cloud.client.create_instances(
            InstanceCreate(image="tiny", flavor="t1.micro", name="vm",
                           ssh_keys=[Path(f"{key}.pub").read_text()])
        )  # fmt: skip
        cloud.client.wait_operation(created.operation.id, timeout=300)
        port = int(created.instances[0].ssh_port or 0)
        wait_for(lambda: READY_MARKER in cloud.console("vm"), 240, "the guest to boot")
        wait_for(lambda: subprocess.run(guest_ssh(port, key, "true"), capture_output=True,
                                        check=False).returncode == 0, 120, "ssh")  # fmt: skip
        yield cloud, key, port
    finally:
        cloud.close()
        shutil.rmtree(root, ignore_errors=True)


def wait_script(volume_id: str, *, present: bool) -> str:
    """Prints ``go``, then ``found`` once the volume's disk is there (or gone)."""
    test = "-z" if present else "-n"
    return (
        f'echo go; while [ {test} "$({find_device_script(volume_id)})" ]; do usleep 5000; '
        "done; echo found"
    )


def guest_ssh(port: int, key: Path, command: str) -> list[str]:
    return [
        "ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
        "-o", "LogLevel=ERROR", "root@127.0.0.1", command,
    ]  # fmt: skip


@contextmanager
def workspace() -> Iterator[Path]:
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vbench-", dir=TEST_ROOT))
    work.chmod(0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--sizes", default="1,10", help="volume sizes in GiB")
    parser.add_argument("--attach-runs", type=int, default=5)
    parser.add_argument("--no-attach", action="store_true")
    parser.add_argument("--no-clones", action="store_true")
    parser.add_argument("--api-runs", type=int, default=5, help="0: skip the API attach runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (loop devices, libvirt)")
    with workspace() as work:
        if not args.no_clones:
            sizes = [int(s) for s in args.sizes.split(",")]
            bench_clones(work, sizes, args.runs, args.baseline_runs)
        if not args.no_attach:
            bench_attach(work, args.attach_runs)
    if args.api_runs:
        bench_api_attach(args.api_runs)


if __name__ == "__main__":
    main()
