"""The ``file`` volume backend: qcow2 or raw files in a directory (which may be a shared mount).

Layout under ``root``::

    volumes/<id>.qcow2|.raw   the volume's data (what QEMU opens)
    volumes/<id>.json         its record, written last: a volume exists iff its record does
    layers/<hex>.qcow2        frozen qcow2 backing layers (mode 0444, never opened for writing)
    tmp/                      staging; everything is made here and renamed into place
    .lock                     flock taken by every change (several processes may share a store)

Snapshots and clones, by what the filesystem offers (tried once per store, not guessed):

1. **Reflink** (XFS, btrfs): ``FICLONE`` makes the copy share every block with the source;
   later writes to either side are copied on write by the filesystem. Constant time whatever
   the size, for raw and qcow2, and atomic, so even an exported (attached, running) volume
   gets a crash-consistent copy.
2. **qcow2 backing layer** (qcow2 volumes without reflinks): a backing file must never change
   under its overlays, so the source's current file is *frozen* rather than reused: it is
   hard-linked into ``layers/`` (and made 0444), then the source and the copy each become a
   new empty overlay on that layer (relative backing path ``../layers/<hex>.qcow2``, so the
   store may be mounted elsewhere). Writes after the snapshot land in each side's own overlay;
   the frozen layer is read-only for everyone. The link-then-rename order means a crash leaves
   either the old source untouched (plus an orphan layer the next clean-up removes) or the
   new layout complete. Layers are deleted once no volume or layer uses them. The source's
   file changes under the source path, so an exported source (a running QEMU holds the old
   file open) is refused: detach it first. Chains grow by one layer per snapshot; nothing
   flattens them yet.
3. **Full copy** (raw volumes without reflinks): a sparse copy, sized against free space;
   refused for exported volumes (a copy taken while the guest writes is not point-in-time).

A store on a local directory exports only to this host; ``shared=True`` (an NFS-like mount at
the same path on every host) exports to any host. Sizes are checked against the filesystem's
free space even though files are sparse: thin provisioning must be a deliberate choice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from stratuslab.drivers.storage import files
from stratuslab.drivers.storage.base import (
    BackendFeatures,
    VolumeExport,
    VolumeInfo,
    check_size,
    check_volume_id,
)
from stratuslab.errors import CapacityError, Conflict, InvalidInput, NotFound

SCHEMA_VERSION = 1
FORMATS = ("qcow2", "raw")
_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class FileVolumeBackend:
    """A :class:`~stratuslab.drivers.storage.base.VolumeBackend` on files under ``root``.

    ``format`` is the format of new volumes (``qcow2`` or ``raw``). ``reflink`` forces the
    clone strategy (None: try the filesystem once). ``shared`` says ``root`` is the same
    mount on every host; ``hostname`` is this host's name (for local-only exports).
    """

    name = "file"

    def __init__(
        self,
        root: Path,
        *,
        format: str = "qcow2",
        reflink: bool | None = None,
        shared: bool = False,
        hostname: str | None = None,
    ) -> None:
        if format not in FORMATS:
            raise InvalidInput(
                f"unknown volume format {format!r}", hint=f"use one of: {', '.join(FORMATS)}"
            )
        self.root = root
        self.format = format
        self.shared = shared
        self.hostname = hostname or socket.gethostname()
        self._volumes, self._layers, self._tmp = root / "volumes", root / "layers", root / "tmp"
        for directory in (root, self._volumes, self._layers, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)  # QEMU (user libvirt-qemu) must reach the files
        self._reflink = files.reflink_works(self._tmp) if reflink is None else reflink
        self._lock = threading.Lock()

    @property
    def features(self) -> BackendFeatures:
        return BackendFeatures(
            cow_clone=self._reflink or self.format == "qcow2",
            live_snapshot=self._reflink,
            shared=self.shared,
        )

    # -- the VolumeBackend protocol ---------------------------------------------------------

    def create(
        self, volume_id: str, size_bytes: int, *, from_image: Path | None = None
    ) -> VolumeInfo:
        check_volume_id(volume_id)
        check_size(size_bytes)
        with self._locked():
            self._check_free(volume_id)
            self._check_space(size_bytes, f"create volume {volume_id}")
            if from_image is not None:
                self._check_image(from_image, size_bytes)
            data = self.data_path(volume_id, self.format)
            tmp = self._tmp_path(self.format)
            with files.removed_on_error(tmp):
                self._make_data(tmp, size_bytes, from_image)
                os.replace(tmp, data)
            info = VolumeInfo(volume_id, size_bytes, self.format)
            with files.removed_on_error(data):
                self._write(info)
            return info

    def delete(self, volume_id: str) -> None:
        with self._locked():
            info = self._read(volume_id)
            if info.exports:
                raise Conflict(
                    f"volume {volume_id} is exported to {', '.join(info.exports)}",
                    hint="detach it and unexport it before deleting it",
                )
            self._record_path(volume_id).unlink()
            self.data_path(volume_id, info.format).unlink(missing_ok=True)
            self._collect_layers()

    def grow(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        check_size(size_bytes)
        with self._locked():
            info = self._read(volume_id)
            if size_bytes == info.size_bytes:
                return info
            if size_bytes < info.size_bytes:
                raise InvalidInput(
                    f"volume {volume_id} has {info.size_bytes} bytes; shrinking to "
                    f"{size_bytes} would lose data",
                    hint="give a size larger than the current one",
                )
            self._check_changeable(info, "grow")
            self._check_space(size_bytes - info.size_bytes, f"grow volume {volume_id}")
            data = self.data_path(volume_id, info.format)
            if info.format == "raw":
                os.truncate(data, size_bytes)
            else:
                files.run(
                    ["qemu-img", "resize", "-q", "-f", "qcow2", str(data), str(size_bytes)],
                    what=f"grow volume {volume_id}",
                )
            grown = replace(info, size_bytes=size_bytes)
            self._write(grown)
            return grown

    def snapshot(self, src: str, dst: str) -> VolumeInfo:
        return self._copy(src, dst, readonly=True)

    def clone(self, src: str, dst: str) -> VolumeInfo:
        return self._copy(src, dst, readonly=False)

    def export(self, volume_id: str, host: str) -> VolumeExport:
        with self._locked():
            info = self._read(volume_id)
            if not self.shared and host not in _LOCAL_NAMES | {self.hostname}:
                raise InvalidInput(
                    f"volume store {self.root} is local to {self.hostname}; "
                    f"host {host} cannot reach volume {volume_id}",
                    hint="attach it on this host, or use a shared mount or the iscsi backend",
                )
            if host not in info.exports:
                exports = tuple(sorted({*info.exports, host}))
                self._write(replace(info, exports=exports))
        return VolumeExport(
            volume_id=volume_id,
            host=host,
            format=info.format,
            readonly=info.readonly,
            path=self.data_path(volume_id, info.format),
        )

    def unexport(self, volume_id: str, host: str) -> None:
        with self._locked():
            info = self._read(volume_id)
            if host in info.exports:
                exports = tuple(h for h in info.exports if h != host)
                self._write(replace(info, exports=exports))

    def free_bytes(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def exists(self, volume_id: str) -> bool:
        check_volume_id(volume_id)
        return self._record_path(volume_id).exists()

    def size(self, volume_id: str) -> int:
        return self.info(volume_id).size_bytes

    def info(self, volume_id: str) -> VolumeInfo:
        return self._read(volume_id)

    def list_volumes(self) -> list[VolumeInfo]:
        ids = sorted(path.stem for path in self._volumes.glob("*.json"))
        return [self._read(volume_id) for volume_id in ids]

    # -- paths ------------------------------------------------------------------------------

    def data_path(self, volume_id: str, fmt: str | None = None) -> Path:
        """Where the volume's data lives (what QEMU or tgtd opens)."""
        return self._volumes / f"{volume_id}.{fmt or self._read(volume_id).format}"

    def layers(self) -> list[Path]:
        """The frozen backing layers in use (for tests and administrators)."""
        return sorted(self._layers.glob("*.qcow2"))

    # -- internals --------------------------------------------------------------------------

    def _copy(self, src: str, dst: str, *, readonly: bool) -> VolumeInfo:
        check_volume_id(src)
        check_volume_id(dst)
        with self._locked():
            info = self._read(src)
            self._check_free(dst)
            if info.exports and not self._reflink:
                raise Conflict(
                    f"volume {src} is exported to {', '.join(info.exports)}; this store "
                    "cannot copy it atomically while it may be written",
                    hint="detach and unexport it first, or use a reflink filesystem (XFS, btrfs)",
                )
            source, target = self.data_path(src, info.format), self.data_path(dst, info.format)
            if self._reflink:
                self._reflink_copy(source, target)
            elif info.format == "qcow2":
                self._freeze_and_branch(source, target, info.size_bytes)
            else:
                self._full_copy(source, target, dst)
            copy = VolumeInfo(dst, info.size_bytes, info.format, readonly=readonly, parent=src)
            with files.removed_on_error(target):
                if readonly:
                    target.chmod(0o444)
                self._write(copy)
            return copy

    def _reflink_copy(self, source: Path, target: Path) -> None:
        tmp = self._tmp_path(source.suffix[1:])
        with files.removed_on_error(tmp):
            files.reflink(source, tmp)
            tmp.chmod(0o644)
            os.replace(tmp, target)

    def _full_copy(self, source: Path, target: Path, dst: str) -> None:
        self._check_space(files.allocated_bytes(source), f"copy into volume {dst}")
        tmp = self._tmp_path(source.suffix[1:])
        with files.removed_on_error(tmp):
            files.sparse_copy(source, tmp)
            tmp.chmod(0o644)
            os.replace(tmp, target)

    def _freeze_and_branch(self, source: Path, target: Path, size_bytes: int) -> None:
        """Freeze ``source`` into a layer; ``source`` and ``target`` become overlays on it."""
        layer = self._layers / f"{uuid.uuid4().hex}.qcow2"
        backing = os.path.relpath(layer, source.parent)
        new_source, new_target = self._tmp_path("qcow2"), self._tmp_path("qcow2")
        with files.removed_on_error(new_source, new_target):
            args = ["-u", "-b", backing, "-F", "qcow2", str(new_source), str(size_bytes)]
            files.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", *args],
                what=f"create an overlay on {layer.name}",
            )
            shutil.copyfile(new_source, new_target)  # the two empty overlays are identical
            # The overlays name the layer relative to volumes/, and they live in tmp/: the
            # same depth, so the relative path is right once they are renamed.
            mode = source.stat().st_mode & 0o777
            os.link(source, layer)
            try:
                layer.chmod(0o444)
                os.replace(new_source, source)
            except BaseException:
                source.chmod(mode)
                layer.unlink()
                raise
            new_source.unlink(missing_ok=True)
            source.chmod(mode)
            os.replace(new_target, target)

    def _make_data(self, tmp: Path, size_bytes: int, from_image: Path | None) -> None:
        # QEMU gives new files an XFS extent size hint of 1 MiB, which turns off delayed
        # allocation: a 10 GiB import became ~3,800 extents, and a reflink clone costs time
        # per extent (90-160 ms instead of under 1 ms). Without the hint the file is written
        # in a few large extents (docs/benchmarks.md).
        hint = ["-o", "extent_size_hint=0"]
        if from_image is not None:
            files.run(
                ["qemu-img", "convert", "-q", "-O", self.format, *hint, str(from_image),
                 str(tmp)],
                what=f"import image {from_image}",
            )  # fmt: skip
            files.run(
                ["qemu-img", "resize", "-q", "-f", self.format, str(tmp), str(size_bytes)],
                what=f"resize the copy of {from_image}",
            )
        elif self.format == "raw":
            with tmp.open("xb") as f:
                f.truncate(size_bytes)
        else:
            files.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", *hint, str(tmp), str(size_bytes)],
                what="create a qcow2 volume",
            )
        tmp.chmod(0o644)
        # on disk before it is renamed into place (and a later reflink has nothing to flush)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _collect_layers(self) -> None:
        """Delete layers no volume (directly or through other layers) stands on."""
        used: set[Path] = set()
        todo = [self._volumes / f"{i.volume_id}.{i.format}" for i in self.list_volumes()]
        while todo:
            path = todo.pop()
            backing = files.qcow2_backing(path) if path.exists() else None
            if backing is not None and backing.resolve() not in used:
                used.add(backing.resolve())
                todo.append(backing)
        for layer in self.layers():
            if layer.resolve() not in used:
                layer.unlink()

    def _check_image(self, image: Path, size_bytes: int) -> None:
        if not image.is_file():
            raise NotFound(f"no disk image at {image}", hint="give the path of an image file")
        virtual = files.image_virtual_size(image)
        if virtual > size_bytes:
            raise InvalidInput(
                f"image {image.name} is {virtual} bytes, more than the volume's {size_bytes}",
                hint=f"make the volume at least {virtual} bytes",
            )

    def _check_free(self, volume_id: str) -> None:
        if self._record_path(volume_id).exists():
            raise Conflict(f"volume {volume_id} already exists", hint="pick another id")

    def _check_space(self, needed: int, action: str) -> None:
        free = self.free_bytes()
        if needed > free:
            raise CapacityError(
                f"cannot {action}: it needs {needed} bytes and {self.root} has {free} free",
                hint="make it smaller, delete volumes, or add storage",
            )

    @staticmethod
    def _check_changeable(info: VolumeInfo, action: str) -> None:
        if info.readonly:
            raise Conflict(
                f"volume {info.volume_id} is a read-only snapshot",
                hint=f"clone it and {action} the clone",
            )
        if info.exports:
            raise Conflict(
                f"cannot {action} volume {info.volume_id}: it is exported to "
                f"{', '.join(info.exports)}",
                hint="detach and unexport it first",
            )

    def _record_path(self, volume_id: str) -> Path:
        return self._volumes / f"{volume_id}.json"

    def _tmp_path(self, suffix: str) -> Path:
        return self._tmp / f"{uuid.uuid4().hex}.{suffix}"

    def _read(self, volume_id: str) -> VolumeInfo:
        check_volume_id(volume_id)
        try:
            doc: dict[str, Any] = json.loads(self._record_path(volume_id).read_text())
        except FileNotFoundError:
            raise NotFound(
                f"no volume {volume_id} in {self.root}", hint="check the volume id"
            ) from None
        return VolumeInfo(
            volume_id=doc["volume_id"],
            size_bytes=int(doc["size_bytes"]),
            format=doc["format"],
            readonly=bool(doc.get("readonly", False)),
            parent=doc.get("parent"),
            exports=tuple(doc.get("exports", ())),
        )

    def _write(self, info: VolumeInfo) -> None:
        doc = {"schema_version": SCHEMA_VERSION, **asdict(info), "exports": list(info.exports)}
        files.write_json_atomically(self._record_path(info.volume_id), doc)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, files.file_lock(self.root / ".lock"):
            yield
