"""Checking that an uploaded file really is a disk image (qemu-img, plus signatures)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratuslab.errors import ImageError

_NOT_A_DISK_HINT = (
    "give a qcow2 image or a raw disk image (with a partition table or a file system); "
    "`stratus appliance build tiny` makes one"
)


@dataclass(frozen=True)
class DiskImageInfo:
    format: str
    virtual_size: int
    actual_size: int


def inspect_disk_image(path: Path, *, display_name: str = "") -> DiskImageInfo:
    name = display_name or path.name
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"{name} is empty", hint=_NOT_A_DISK_HINT, code="not_a_disk_image")
    info = _qemu_img_info(path)
    fmt = str(info.get("format", ""))
    if fmt == "qcow2":
        if info.get("backing-filename"):
            raise ImageError(
                f"{name} is a qcow2 overlay with a backing file",
                hint="flatten it first: qemu-img convert -O qcow2 IN OUT",
                code="not_a_disk_image",
            )
    elif fmt == "raw":
        if not _looks_like_raw_disk(path):
            raise ImageError(
                f"{name} is not a disk image: it has no boot sector, partition table or "
                "file system",
                hint=_NOT_A_DISK_HINT,
                code="not_a_disk_image",
            )
    else:
        raise ImageError(
            f"{name} is a {fmt or 'unknown'} image; only qcow2 and raw are supported",
            hint=f"convert it: qemu-img convert -O qcow2 {name} {Path(name).stem}.qcow2",
            code="unsupported_image_format",
        )
    return DiskImageInfo(
        format=fmt, virtual_size=int(info.get("virtual-size", size)), actual_size=size
    )


def _qemu_img_info(path: Path) -> dict[str, Any]:
    if shutil.which("qemu-img") is None:
        raise ImageError(
            "qemu-img is not installed on the controller",
            hint="apt-get install qemu-utils",
            code="qemu_img_missing",
        )
    proc = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageError(
            f"qemu-img cannot read the file: {proc.stderr.strip()}",
            hint=_NOT_A_DISK_HINT,
            code="not_a_disk_image",
        )
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _looks_like_raw_disk(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(64 * 1024)
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        return True  # MBR / boot sector (GPT has a protective MBR)
    if len(head) >= 1082 and head[1080:1082] == b"\x53\xef":
        return True  # ext2/3/4 superblock
    if head[:4] == b"XFSB":
        return True
    with path.open("rb") as fh:
        fh.seek(0x8001)
        return fh.read(5) == b"CD001"  # ISO 9660
