"""File helpers for the storage backends: reflinks, sparse copies, qcow2 headers, qemu-img.

Nothing here knows about volumes; :mod:`.file` builds the backend from these pieces.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from stratuslab.errors import DriverError, ImageError

#: ``FICLONE`` from <linux/fs.h>: make the destination share all of the source's blocks.
FICLONE = 0x40049409
QCOW2_MAGIC = b"QFI\xfb"
_COPY_CHUNK = 4 << 20


def run(args: Sequence[str], *, what: str) -> str:
    """Run a tool; its failure becomes a :class:`DriverError` that quotes its stderr."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise DriverError(
            f"cannot {what}: {args[0]} is not installed",
            hint=f"install the package providing {args[0]}",
        ) from exc
    if done.returncode != 0:
        raise DriverError(
            f"cannot {what}: {args[0]} exited with {done.returncode}: {done.stderr.strip()}",
            hint="see the message; check the storage directory and free space",
        )
    return done.stdout


def reflink(src: Path, dst: Path) -> None:
    """Make ``dst`` (new) share ``src``'s blocks; OSError if the filesystem cannot."""
    with src.open("rb") as source, dst.open("xb") as target:
        try:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
        except OSError:
            target.close()
            dst.unlink()
            raise


def reflink_works(directory: Path) -> bool:
    """True if files in ``directory`` can be reflinked (tried, not guessed from the fs type)."""
    probe = directory / f".reflink-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"\0" * 4096)
        reflink(probe, probe.with_suffix(".clone"))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
            return False
        raise
    finally:
        probe.unlink(missing_ok=True)
        probe.with_suffix(".clone").unlink(missing_ok=True)
    return True


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to the new file ``dst``, keeping holes (zero chunks are skipped)."""
    size = src.stat().st_size
    with src.open("rb") as source, dst.open("xb") as target:
        offset = 0
        while offset < size:
            data_at = _next_data(source.fileno(), offset)
            if data_at is None or data_at >= size:
                break
            hole_at = min(os.lseek(source.fileno(), data_at, os.SEEK_HOLE), size)
            source.seek(data_at)
            target.seek(data_at)
            left = hole_at - data_at
            while left > 0:
                chunk = source.read(min(_COPY_CHUNK, left))
                target.write(chunk)
                left -= len(chunk)
            offset = hole_at
        target.truncate(size)


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def qcow2_backing(path: Path) -> Path | None:
    """The backing file named in a qcow2 header (resolved next to ``path``), if any."""
    with path.open("rb") as f:
        header = f.read(32)
        if len(header) < 32 or header[:4] != QCOW2_MAGIC:
            return None
        offset, length = struct.unpack(">QI", header[8:20])
        if offset == 0 or length == 0:
            return None
        f.seek(offset)
        name = f.read(length).decode()
    return path.parent / name


def image_virtual_size(path: Path) -> int:
    """The virtual size of a disk image qemu-img reads, whole chain (``ImageError`` if not)."""
    try:
        out = run(
            ["qemu-img", "info", "--output=json", "--backing-chain", str(path)],
            what=f"read image {path}",
        )
        return int(json.loads(out)[0]["virtual-size"])
    except DriverError as exc:
        raise ImageError(f"{path} is not a disk image qemu-img can read", hint=exc.message) from exc


def write_json_atomically(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def removed_on_error(*paths: Path) -> Iterator[None]:
    """Delete ``paths`` (files) if the block fails, so no half-made file stays behind."""
    try:
        yield
    except BaseException:
        for path in paths:
            path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (between processes sharing the store)."""
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def tool_available(name: str) -> bool:
    return shutil.which(name) is not None


def _next_data(fd: int, offset: int) -> int | None:
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole after offset
            return None
        raise
