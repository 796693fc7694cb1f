"""An in-memory volume backend that keeps the contract, for tests and simulation.

Volumes hold real bytes (what was written, zeros elsewhere), so tests can prove that
snapshots are point-in-time: :meth:`FakeVolumeBackend.write` and
:meth:`FakeVolumeBackend.read` play the guest. Space is counted thick: every volume uses its
full size out of ``capacity_bytes``. ``fail_on={"create", ...}`` makes a method raise a
:class:`~stratuslab.errors.DriverError` before it changes anything.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from stratuslab.drivers.storage.base import (
    BackendFeatures,
    VolumeExport,
    VolumeInfo,
    check_size,
    check_volume_id,
)
from stratuslab.errors import CapacityError, Conflict, DriverError, InvalidInput, NotFound

FAILABLE = frozenset(
    {"create", "delete", "grow", "snapshot", "clone", "export", "unexport", "free_bytes"}
)


@dataclass
class _Volume:
    info: VolumeInfo
    data: bytearray = field(default_factory=bytearray)


class FakeVolumeBackend:
    """A :class:`~stratuslab.drivers.storage.base.VolumeBackend` in a dict."""

    name = "fake"

    def __init__(
        self,
        capacity_bytes: int = 1 << 40,
        *,
        live_snapshot: bool = True,
        fail_on: Iterable[str] = (),
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.features = BackendFeatures(cow_clone=True, live_snapshot=live_snapshot, shared=True)
        self.fail_on: set[str] = set(fail_on)
        unknown = self.fail_on - FAILABLE
        if unknown:
            raise ValueError(f"cannot inject failures into {sorted(unknown)}")
        self._volumes: dict[str, _Volume] = {}
        self._lock = threading.Lock()

    # -- the VolumeBackend protocol ---------------------------------------------------------

    def create(
        self, volume_id: str, size_bytes: int, *, from_image: Path | None = None
    ) -> VolumeInfo:
        self._maybe_fail("create")
        check_volume_id(volume_id)
        check_size(size_bytes)
        data = bytearray()
        if from_image is not None:
            if not from_image.is_file():
                raise NotFound(f"no disk image at {from_image}", hint="give an image file")
            data = bytearray(from_image.read_bytes())  # taken as raw
            if len(data) > size_bytes:
                raise InvalidInput(
                    f"image {from_image.name} is {len(data)} bytes, more than {size_bytes}",
                    hint=f"make the volume at least {len(data)} bytes",
                )
        with self._lock:
            self._check_free(volume_id)
            self._check_space(size_bytes, f"create volume {volume_id}")
            info = VolumeInfo(volume_id, size_bytes, "raw")
            self._volumes[volume_id] = _Volume(info, data)
            return info

    def delete(self, volume_id: str) -> None:
        self._maybe_fail("delete")
        with self._lock:
            volume = self._get(volume_id)
            if volume.info.exports:
                raise Conflict(
                    f"volume {volume_id} is exported to {', '.join(volume.info.exports)}",
                    hint="detach it and unexport it before deleting it",
                )
            del self._volumes[volume_id]

    def grow(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        self._maybe_fail("grow")
        check_size(size_bytes)
        with self._lock:
            volume = self._get(volume_id)
            info = volume.info
            if size_bytes == info.size_bytes:
                return info
            if size_bytes < info.size_bytes:
                raise InvalidInput(
                    f"volume {volume_id} has {info.size_bytes} bytes; shrinking to "
                    f"{size_bytes} would lose data",
                    hint="give a size larger than the current one",
                )
            if info.readonly:
                raise Conflict(
                    f"volume {volume_id} is a read-only snapshot", hint="grow a clone of it"
                )
            if info.exports:
                raise Conflict(
                    f"cannot grow volume {volume_id}: it is exported to {', '.join(info.exports)}",
                    hint="detach and unexport it first",
                )
            self._check_space(size_bytes - info.size_bytes, f"grow volume {volume_id}")
            volume.info = replace(info, size_bytes=size_bytes)
            return volume.info

    def snapshot(self, src: str, dst: str) -> VolumeInfo:
        self._maybe_fail("snapshot")
        return self._copy(src, dst, readonly=True)

    def clone(self, src: str, dst: str) -> VolumeInfo:
        self._maybe_fail("clone")
        return self._copy(src, dst, readonly=False)

    def export(self, volume_id: str, host: str) -> VolumeExport:
        self._maybe_fail("export")
        with self._lock:
            volume = self._get(volume_id)
            if host not in volume.info.exports:
                exports = tuple(sorted({*volume.info.exports, host}))
                volume.info = replace(volume.info, exports=exports)
            return VolumeExport(
                volume_id=volume_id,
                host=host,
                format="raw",
                readonly=volume.info.readonly,
                path=Path("/fake/volumes") / volume_id,
            )

    def unexport(self, volume_id: str, host: str) -> None:
        self._maybe_fail("unexport")
        with self._lock:
            volume = self._get(volume_id)
            exports = tuple(h for h in volume.info.exports if h != host)
            volume.info = replace(volume.info, exports=exports)

    def free_bytes(self) -> int:
        self._maybe_fail("free_bytes")
        with self._lock:
            return self._free()

    def exists(self, volume_id: str) -> bool:
        check_volume_id(volume_id)
        with self._lock:
            return volume_id in self._volumes

    def size(self, volume_id: str) -> int:
        return self.info(volume_id).size_bytes

    def info(self, volume_id: str) -> VolumeInfo:
        with self._lock:
            return self._get(volume_id).info

    def list_volumes(self) -> list[VolumeInfo]:
        with self._lock:
            return [self._volumes[key].info for key in sorted(self._volumes)]

    # -- playing the guest ------------------------------------------------------------------

    def write(self, volume_id: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``, as a guest would (read-only volumes refuse)."""
        with self._lock:
            volume = self._get(volume_id)
            if volume.info.readonly:
                raise DriverError(f"volume {volume_id} is read-only", hint="write to a clone")
            if offset < 0 or offset + len(data) > volume.info.size_bytes:
                raise InvalidInput(f"write beyond the end of volume {volume_id}", hint="")
            if len(volume.data) < offset + len(data):
                volume.data.extend(bytes(offset + len(data) - len(volume.data)))
            volume.data[offset : offset + len(data)] = data

    def read(self, volume_id: str, offset: int, length: int) -> bytes:
        with self._lock:
            volume = self._get(volume_id)
            chunk = bytes(volume.data[offset : offset + length])
            return chunk + bytes(length - len(chunk))

    # -- internals --------------------------------------------------------------------------

    def _copy(self, src: str, dst: str, *, readonly: bool) -> VolumeInfo:
        check_volume_id(src)
        check_volume_id(dst)
        with self._lock:
            source = self._get(src)
            self._check_free(dst)
            if source.info.exports and not self.features.live_snapshot:
                raise Conflict(
                    f"volume {src} is exported; this store cannot copy it atomically",
                    hint="detach and unexport it first",
                )
            self._check_space(source.info.size_bytes, f"copy volume {src}")
            info = VolumeInfo(dst, source.info.size_bytes, "raw", readonly=readonly, parent=src)
            self._volumes[dst] = _Volume(info, bytearray(source.data))
            return info

    def _get(self, volume_id: str) -> _Volume:
        check_volume_id(volume_id)
        volume = self._volumes.get(volume_id)
        if volume is None:
            raise NotFound(f"no volume {volume_id}", hint="check the volume id")
        return volume

    def _check_free(self, volume_id: str) -> None:
        if volume_id in self._volumes:
            raise Conflict(f"volume {volume_id} already exists", hint="pick another id")

    def _check_space(self, needed: int, action: str) -> None:
        free = self._free()
        if needed > free:
            raise CapacityError(
                f"cannot {action}: it needs {needed} bytes and {free} are free",
                hint="make it smaller, delete volumes, or add storage",
            )

    def _free(self) -> int:
        return self.capacity_bytes - sum(v.info.size_bytes for v in self._volumes.values())

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail_on:
            raise DriverError(
                f"injected failure in {self.name}.{method}",
                hint="the test asked for it with fail_on",
            )
