"""The volume backend contract: persistent disks a compute driver can attach.

A backend stores volumes by id and hands out *exports*: a description of where a host finds
a volume's data (a file path and format, or an iSCSI target) that becomes a
:class:`~stratuslab.drivers.base.VolumeAttachment`. It knows nothing of instances, owners
or the database; the controller decides who may do what (and checks quotas) before calling.

Rules every backend follows (``tests/contract/test_volume_backend.py`` checks them):

* Bad input fails before anything changes: a size that is not a positive multiple of
  :data:`SECTOR`, or beyond :meth:`VolumeBackend.free_bytes`, is
  :class:`~stratuslab.errors.InvalidInput` / :class:`~stratuslab.errors.CapacityError`; an
  unknown id is :class:`~stratuslab.errors.NotFound`; an id in use is
  :class:`~stratuslab.errors.Conflict`. A failed call leaves no half-made volume behind.
* ``snapshot`` and ``clone`` are point-in-time: what is written to the source afterwards is
  not seen by the copy, nor the other way round. A snapshot is read-only; a clone is writable.
* An exported volume cannot be deleted or grown (unexport it first). Snapshots and clones of
  an exported volume are taken only when the backend can take them atomically
  (:attr:`BackendFeatures.live_snapshot`); otherwise they are a Conflict.
* ``export`` and ``unexport`` are idempotent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from stratuslab.drivers.base import NetworkSource, VolumeAttachment
from stratuslab.errors import InvalidInput

#: Volume sizes are whole 512-byte sectors.
SECTOR = 512
#: Volume ids become file names and iSCSI target names: lower-case letters, digits, dashes.
VOLUME_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


@dataclass(frozen=True)
class BackendFeatures:
    """What a backend can do cheaply, so callers can choose (and tests can check)."""

    #: ``clone``/``snapshot`` share blocks (reflink, qcow2 backing layer) instead of copying.
    cow_clone: bool
    #: ``clone``/``snapshot`` of an exported (possibly attached) volume is crash-consistent.
    live_snapshot: bool
    #: Exports are reachable from other hosts (shared mount, iSCSI).
    shared: bool


@dataclass(frozen=True)
class VolumeInfo:
    """A volume as the backend stores it."""

    volume_id: str
    size_bytes: int
    format: str  # raw | qcow2
    readonly: bool = False
    #: The volume it was snapshotted or cloned from (it may be gone since).
    parent: str | None = None
    #: Hosts it is exported to.
    exports: tuple[str, ...] = ()


@dataclass(frozen=True)
class VolumeExport:
    """Where ``host`` finds a volume's data: a file (``path``) or a network disk."""

    volume_id: str
    host: str
    format: str
    readonly: bool
    path: Path | None = None
    network: NetworkSource | None = None

    @property
    def url(self) -> str:
        if self.network is not None:
            return self.network.url
        return f"file://{self.path}"

    def attachment(
        self, index: int, *, readonly: bool = False, shareable: bool = False
    ) -> VolumeAttachment:
        """The attachment of this export at ``index`` (read-only if the volume is)."""
        return VolumeAttachment(
            volume_id=self.volume_id,
            index=index,
            format=self.format,
            path=self.path,
            network=self.network,
            readonly=readonly or self.readonly,
            shareable=shareable,
        )


@runtime_checkable
class VolumeBackend(Protocol):
    """Persistent volumes on one kind of storage (see the module docstring for the rules)."""

    name: str

    @property
    def features(self) -> BackendFeatures:
        """What this backend can do cheaply."""
        ...

    def create(
        self, volume_id: str, size_bytes: int, *, from_image: Path | None = None
    ) -> VolumeInfo:
        """A new volume of ``size_bytes``: zeros, or the disk image ``from_image`` (any format
        qemu-img reads, no larger than ``size_bytes``)."""
        ...

    def delete(self, volume_id: str) -> None:
        """Remove the volume and its data (snapshots and clones of it stay valid)."""
        ...

    def grow(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        """Make the volume ``size_bytes`` large; shrinking is refused."""
        ...

    def snapshot(self, src: str, dst: str) -> VolumeInfo:
        """A read-only point-in-time copy of ``src`` named ``dst``."""
        ...

    def clone(self, src: str, dst: str) -> VolumeInfo:
        """A writable point-in-time copy of ``src`` named ``dst`` (copy-on-write if possible)."""
        ...

    def export(self, volume_id: str, host: str) -> VolumeExport:
        """Make the volume reachable from ``host`` and say how."""
        ...

    def unexport(self, volume_id: str, host: str) -> None:
        """Withdraw the export to ``host``."""
        ...

    def free_bytes(self) -> int:
        """Bytes left for new volumes."""
        ...

    def exists(self, volume_id: str) -> bool: ...

    def size(self, volume_id: str) -> int:
        """The volume's size in bytes (as the guest sees it)."""
        ...

    def info(self, volume_id: str) -> VolumeInfo: ...

    def list_volumes(self) -> list[VolumeInfo]:
        """Every volume, sorted by id."""
        ...


def check_volume_id(volume_id: str) -> str:
    if not VOLUME_ID_RE.match(volume_id):
        raise InvalidInput(
            f"malformed volume id {volume_id!r}",
            hint="use 1-64 lower-case letters, digits and dashes (a UUID fits)",
        )
    return volume_id


def check_size(size_bytes: int) -> int:
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes <= 0:
        raise InvalidInput(
            f"volume size {size_bytes!r} is not a positive number of bytes",
            hint="give the size in bytes, at least 512",
        )
    if size_bytes % SECTOR:
        raise InvalidInput(
            f"volume size {size_bytes} is not a multiple of {SECTOR} bytes",
            hint="round it up to whole sectors (or use whole MiB/GiB)",
        )
    return size_bytes
