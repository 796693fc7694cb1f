"""Find out whether KVM really works on this host, by booting a tiny guest under it.

``/dev/kvm`` existing proves little: under nested virtualization KVM may enter 64-bit mode
and then run guest code hundreds of times slower than TCG, or fail to emulate SSE, and a
Linux guest looks hung. So the probe boots a 512-byte boot sector (source:
``kvm_probe.asm`` next to this module) with ``-accel kvm``. The sector goes to long mode the
way Linux does (GDT, PAE, identity page tables, EFER.LME, paging; CPUID, RDMSR, SSE), runs a
fixed memory workload and prints :data:`MARKER` on COM1. KVM works iff the marker appears
within the timeout. The answer is cached per kernel release and QEMU version.

The module also checks ``/dev/kvm``'s permissions, which decide whether libvirt's QEMU can
open it at all; only :func:`fix_kvm_device_permissions` changes them.
"""

from __future__ import annotations

import base64
import grp
import json
import os
import platform
import selectors
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stratuslab.errors import DriverError

QEMU = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")
MARKER = b"KVMPROBE-OK"
LONG_MODE_MARKER = b"KVMPROBE-LM"
FIX_COMMAND = "chgrp kvm {path} && chmod 660 {path}"

#: ``nasm -f bin kvm_probe.asm``, base64-encoded.
PROBE_IMAGE = base64.b64decode(
    "+jHAjtiOwI7QvAB85JIMAiT+5pK/ABC5AAxmMcDzZqtmxwYAEAMgAABmxwYAIAMwAAC/ADBmuIMAAABmiQVmBQAA"
    "IACDxwiB/wBAcu4PARaIfQ8gwGaDyAEPIsDqYXwIAGa4EACO2I7AjtC4AQAAgA+iD7riHQ+DrwAAAA8g4A0gBgAA"
    "DyLguAAQAAAPIti5gAAAwA8yDQABAAAPMA8gwIPg+w0CAACADyLA6rJ8AAAYALwAfAAASL5FfQAAAAAAAOhpAAAA"
    "uAcAAAAxyQ+iD7riHXMHuQoBAAAPMrkQAAAAvwAAIABIiT+DxxCB/wAAIAFy8v/JdelmD+/AuAEAAABmD27IZg/U"
    "wWYPfwQlAEAAAIM8JQBAAAABdQ9IvlN9AAAAAAAA6AQAAAD69Ov8Zrr9A+yoIHT7rITAdAdmuvgD7uvrw0tWTVBS"
    "T0JFLUxNDQoAS1ZNUFJPQkUtT0sNCgCQkJCQkJCQAAAAAAAAAAD//wAAAJrPAP//AAAAks8A//8AAACarwAfAGh9"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAVao="
)


@dataclass(frozen=True)
class ProbeResult:
    """What one probe run saw."""

    accel: str  # kvm | tcg
    ok: bool
    seconds: float
    detail: str


def run_probe(accel: str = "kvm", *, qemu: str = QEMU, timeout: float = 5.0) -> ProbeResult:
    """Boot the probe sector under ``accel`` and report whether it printed :data:`MARKER`."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stratus-kvm-probe-") as tmp:
        image = Path(tmp, "probe.img")
        image.write_bytes(PROBE_IMAGE)
        try:
            proc = subprocess.Popen(
                _qemu_command(qemu, accel, image),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            return ProbeResult(accel, False, 0.0, f"cannot run {qemu}: {exc}")
        with proc:
            try:
                out, err = _read_until_marker(proc, timeout)
            finally:
                proc.kill()
    seconds = round(time.monotonic() - started, 3)
    return ProbeResult(accel, MARKER in out, seconds, _describe(accel, out, err, timeout))


def kvm_usable(cache: Path | None = None, *, qemu: str = QEMU, timeout: float = 5.0) -> bool:
    """True iff the probe boots under KVM; the answer is cached in the JSON file ``cache``."""
    key = probe_key(qemu)
    cached = _read_cache(cache).get(key) if cache is not None else None
    if isinstance(cached, dict) and isinstance(cached.get("ok"), bool):
        return bool(cached["ok"])
    result = (
        run_probe("kvm", qemu=qemu, timeout=timeout)
        if KVM_DEVICE.exists()
        else ProbeResult("kvm", False, 0.0, f"{KVM_DEVICE} does not exist")
    )
    if cache is not None:
        _write_cache(cache, key, result)
    return result.ok


def probe_key(qemu: str = QEMU) -> str:
    """The cache key: the answer holds until the kernel or QEMU changes."""
    return f"kernel={platform.release()} qemu={qemu_version(qemu)}"


def qemu_version(qemu: str = QEMU) -> str:
    """QEMU's version line, or ``"missing"``."""
    try:
        done = subprocess.run(
            [qemu, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    lines = done.stdout.splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else "missing"


def check_kvm_device(path: Path = KVM_DEVICE) -> str | None:
    """A description of what is wrong with ``path``'s permissions and how to fix it, or None.

    libvirt runs QEMU as ``libvirt-qemu`` (group ``kvm``). If that user cannot open
    ``/dev/kvm``, libvirt re-probes QEMU's capabilities on every domain start (36-48 s).
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist: KVM is unavailable here and guests run under TCG"
    group = _group_name(info.st_gid)
    mode = stat.S_IMODE(info.st_mode)
    if group == "kvm" and mode & 0o660 == 0o660:
        return None
    return (
        f"{path} is owned by group {group} with mode {mode:o}, so libvirt's QEMU (user "
        f"libvirt-qemu, group kvm) cannot open it and libvirt re-probes QEMU on every "
        f"domain start (36-48 s each); fix: {FIX_COMMAND.format(path=path)}"
    )


def fix_kvm_device_permissions(path: Path = KVM_DEVICE) -> None:
    """Give ``path`` to group ``kvm`` with mode 660. Changes the host: call it on purpose."""
    try:
        os.chown(path, -1, grp.getgrnam("kvm").gr_gid)
        os.chmod(path, 0o660)
    except (KeyError, OSError) as exc:
        raise DriverError(
            f"cannot fix the permissions of {path}: {exc}",
            hint=f"as root, with the kvm group present: {FIX_COMMAND.format(path=path)}",
        ) from exc


def _qemu_command(qemu: str, accel: str, image: Path) -> list[str]:
    return [
        qemu,
        *("-accel", accel, "-machine", "pc", "-m", "64"),
        *("-display", "none", "-nodefaults", "-no-reboot", "-serial", "stdio"),
        *("-drive", f"file={image},format=raw,if=ide"),
    ]


def _read_until_marker(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes]:
    """Collect stdout and stderr until the marker, a KVM error, QEMU's exit or the timeout."""
    if proc.stdout is None or proc.stderr is None:
        raise ValueError("the probe's QEMU needs piped stdout and stderr")
    out, err = bytearray(), bytearray()
    buffers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and not _finished(out, err):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 4096)
                buffers[key.fd] += chunk
                if not chunk:
                    selector.unregister(key.fd)
    return bytes(out), bytes(err)


def _finished(out: bytearray, err: bytearray) -> bool:
    return MARKER in out or b"KVM internal error" in err


def _describe(accel: str, out: bytes, err: bytes, timeout: float) -> str:
    first_error = _first_error(err)
    if MARKER in out:
        return f"the probe guest ran under {accel}"
    if b"KVM internal error" in err:
        return f"{accel}: {first_error} (KVM cannot emulate what the guest ran)"
    if LONG_MODE_MARKER in out:
        return (
            f"{accel}: the probe reached long mode but its workload did not finish in "
            f"{timeout:g} s (KVM far slower than TCG: nested virtualization?)"
        )
    reason = f": {first_error}" if first_error else ""
    return f"{accel}: no marker from the probe guest within {timeout:g} s{reason}"


def _first_error(err: bytes) -> str:
    """QEMU's most telling stderr line: the first error, else the first non-warning."""
    lines = [line.strip() for line in err.decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    others = [line for line in lines if "warning:" not in line]
    return (errors or others or [""])[0]


def _read_cache(cache: Path) -> dict[str, object]:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: Path, key: str, result: ProbeResult) -> None:
    data = _read_cache(cache)
    data[key] = asdict(result)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(cache)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
