"""Disk-image pieces shared by the appliance builders: run a tool, lay out an MBR disk with one
ext4 partition made from a directory tree, install extlinux on it, convert it to qcow2.

The layout boots under SeaBIOS: syslinux's ``mbr.bin`` chains to the active partition, whose
boot sector holds extlinux, which reads ``/boot/extlinux/extlinux.conf``. Building needs root
(a loop device is mounted for ``extlinux --install``), e2fsprogs, extlinux, syslinux-common and
qemu-utils.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from stratuslab.errors import DriverError, ImageError

MBR_CANDIDATES = (Path("/usr/lib/syslinux/mbr/mbr.bin"), Path("/usr/lib/EXTLINUX/mbr.bin"))
PARTITION_START_SECTOR = 2048
SECTOR = 512
RUN_TIMEOUT = 600.0

INSTALL_HINTS = {
    "apt-get": "run on Debian with apt configured",
    "apt-cache": "run on Debian with apt configured",
    "dpkg-deb": "apt-get install dpkg",
    "debootstrap": "apt-get install debootstrap",
    "unshare": "apt-get install util-linux",
    "chroot": "apt-get install coreutils",
    "mkfs.ext4": "apt-get install e2fsprogs",
    "extlinux": "apt-get install extlinux syslinux-common",
    "losetup": "apt-get install mount",
    "mount": "apt-get install mount",
    "umount": "apt-get install mount",
    "qemu-img": "apt-get install qemu-utils",
}
#: The tools :func:`make_disk` and :func:`convert_to_qcow2` need.
DISK_TOOLS = ("mkfs.ext4", "extlinux", "losetup", "mount", "umount", "qemu-img")


def extlinux_conf(
    cmdline: str,
    *,
    label: str = "tiny",
    kernel: str = "/boot/vmlinuz",
    initrd: str = "/boot/initrd.img",
) -> str:
    """The boot loader configuration: boot the only entry at once, echo to serial port 0."""
    return (
        "SERIAL 0 115200\n"
        f"DEFAULT {label}\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        f"LABEL {label}\n"
        f"  LINUX {kernel}\n"
        f"  INITRD {initrd}\n"
        f"  APPEND {cmdline}\n"
    )


def mbr(boot_code: bytes, *, start: int, sectors: int) -> bytes:
    """A 512-byte MBR: boot code, then one bootable Linux partition (type 0x83), then 55AA."""
    if len(boot_code) > 440:
        raise ImageError(
            f"MBR boot code is {len(boot_code)} bytes, more than 440",
            hint="use syslinux-common's mbr.bin",
        )
    entry = (
        b"\x80"
        + _chs(start)
        + b"\x83"
        + _chs(start + sectors - 1)
        + start.to_bytes(4, "little")
        + sectors.to_bytes(4, "little")
    )
    return boot_code.ljust(446, b"\0") + entry + bytes(48) + b"\x55\xaa"


def make_disk(raw: Path, root: Path, *, size_mib: int, root_uuid: str, label: str) -> None:
    """A raw disk: MBR + one ext4 partition populated from ``root``, with extlinux installed.

    ``root`` must hold ``boot/extlinux/extlinux.conf``.
    """
    total = size_mib * 1024 * 1024 // SECTOR
    sectors = total - PARTITION_START_SECTOR
    offset = PARTITION_START_SECTOR * SECTOR
    with raw.open("wb") as disk:
        disk.truncate(total * SECTOR)
        disk.write(mbr(mbr_code(), start=PARTITION_START_SECTOR, sectors=sectors))
    mkfs = ["mkfs.ext4", "-q", "-F", "-L", label, "-U", root_uuid, "-m", "0"]
    # extlinux 6.04 cannot load a kernel stored in extents ("I/O error"): use block maps.
    mkfs += ["-O", "^64bit,^metadata_csum,^extent", "-E", f"offset={offset},root_owner=0:0"]
    run([*mkfs, "-d", str(root), str(raw), f"{sectors * SECTOR // 1024}k"])
    with loop_mount(raw, offset=offset, size=sectors * SECTOR) as mnt:
        run(["extlinux", "--install", str(mnt / "boot/extlinux")])


def convert_to_qcow2(raw: Path, target: Path, *, compress: bool = True) -> None:
    """Convert ``raw`` to qcow2 at ``target`` through a temporary name: all or nothing."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    args = ["qemu-img", "convert", *(["-c"] if compress else []), "-O", "qcow2"]
    try:
        run([*args, str(raw), str(partial)])
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def mbr_code() -> bytes:
    """syslinux's MBR boot code."""
    for path in MBR_CANDIDATES:
        if path.exists():
            return path.read_bytes()[:440]
    raise DriverError(
        "syslinux MBR boot code (mbr.bin) not found",
        hint="apt-get install extlinux syslinux-common",
    )


@contextlib.contextmanager
def loop_mount(image: Path, *, offset: int, size: int) -> Iterator[Path]:
    """Mount the partition at ``offset`` of ``image`` on a temporary directory; always clean up."""
    device = run(
        ["losetup", "--find", "--show", f"--offset={offset}", f"--sizelimit={size}", str(image)]
    ).strip()
    try:
        with tempfile.TemporaryDirectory(prefix="stratus-mnt-") as mnt:
            run(["mount", "-t", "ext4", device, mnt])
            try:
                yield Path(mnt)
            finally:
                run(["umount", mnt])
    finally:
        run(["losetup", "--detach", device])


def check_tools(tools: Sequence[str], *, what: str) -> None:
    """Raise :class:`DriverError` naming the first missing tool; building also needs root."""
    for tool in tools:
        if shutil.which(tool) is None:
            raise DriverError(
                f"{tool} is not installed; it is needed to build {what}",
                hint=INSTALL_HINTS.get(tool, f"install {tool}"),
            )
    if os.geteuid() != 0:
        raise DriverError(
            f"building {what} needs root (loop device and mount for extlinux)",
            hint="run the build as root",
        )


def run(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> str:
    """Run a command, return its stdout; a failure becomes a DriverError naming the command."""
    try:
        done = subprocess.run(
            list(args),
            cwd=cwd,
            env=None if env is None else dict(env),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise DriverError(
            f"{args[0]} is not installed", hint=INSTALL_HINTS.get(args[0], "install it")
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise DriverError(
            f"{args[0]} took more than {timeout:.0f} s", hint="check the host"
        ) from exc
    if done.returncode != 0:
        raise DriverError(
            f"{' '.join(args)} failed with status {done.returncode}: {done.stderr.strip()[-500:]}",
            hint=INSTALL_HINTS.get(args[0], "see the command's error above"),
        )
    return done.stdout


def copy_atomically(source: Path, output: Path) -> None:
    """Copy ``source`` to ``output`` through a temporary name in the same directory."""
    if output.exists() and output.resolve() == source.resolve():
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _chs(lba: int) -> bytes:
    """CHS address of ``lba`` for 255 heads x 63 sectors, saturated at cylinder 1023."""
    cylinder, rest = divmod(lba, 255 * 63)
    if cylinder > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rest, 63)
    return bytes([head, (sector + 1) | ((cylinder >> 2) & 0xC0), cylinder & 0xFF])
