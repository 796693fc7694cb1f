"""The node side of volumes: the host's volume pool and its instances' attachments.

* :class:`StoragePool` converges the volume backend to the pool's desired volumes (create
  blank, from an image, as a snapshot or clone; grow; delete) and reports each one.
  Level-triggered: every pass starts from what the backend holds; a failure is reported once
  per generation and not retried until the controller asks again.
* :class:`VolumeLink` is the agent's controller link with the pool in it: every desired
  state first converges the pool (so volumes exist before instances attach them), every
  report carries the pool's observations, every heartbeat its free space.
* :class:`InstanceVolumes` is what the reconciler calls: the attachments at define time, the
  boot disk of an instance booted from a volume, the hot-plug pass against
  ``HotplugDriver.attached_volumes()`` (so attachments survive agent restarts), and the
  clean-up when an instance goes (unexport; keep its root disk for the quarantine).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from stratuslab.agent.controller import ControllerLink
from stratuslab.config import NodeSettings
from stratuslab.drivers.base import ComputeDriver, DiskSpec, HotplugDriver, VolumeAttachment
from stratuslab.drivers.storage.base import VolumeBackend, VolumeExport
from stratuslab.drivers.storage.registry import get_volume_backend
from stratuslab.errors import ServiceUnavailable, StratusError
from stratuslab.schemas.agent import (
    DesiredInstance,
    DesiredState,
    DesiredVolume,
    Heartbeat,
    ImageRef,
    ObservedVolume,
    Report,
    ReportAck,
)
from stratuslab.types import PowerState

log = logging.getLogger(__name__)

MiB = 1 << 20
#: heartbeat usage keys (services/volumes.py reads them)
POOL_FREE = "volume_free_bytes"
POOL_LIVE_SNAPSHOT = "volume_live_snapshot"
#: volumes are exported to this host (the all-in-one node; see docs/adr/0003-volumes.md)
EXPORT_HOST = "127.0.0.1"


class Images(Protocol):
    def ensure(self, ref: ImageRef) -> Path: ...


@dataclass
class StoragePool:
    backend: VolumeBackend
    #: the address the backend exports to (this host)
    host: str
    images: Images
    #: where an instance's root disk is (for instance_root volumes)
    root_disk: Callable[[str], Path]
    #: volume id -> (generation that failed, reason)
    failed: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: the last desired volumes, by id
    desired: dict[str, DesiredVolume] = field(default_factory=dict)

    def converge(self, wanted: list[DesiredVolume]) -> list[ObservedVolume]:
        self.desired = {v.id: v for v in wanted}
        return [self._one(v) for v in wanted]

    def usage(self) -> dict[str, float]:
        return {
            POOL_FREE: float(self.backend.free_bytes()),
            POOL_LIVE_SNAPSHOT: 1.0 if self.backend.features.live_snapshot else 0.0,
        }

    def keep_root(self, instance_id: str) -> None:
        """Copy an instance's root disk into the volume the controller made for it."""
        for vol in self.desired.values():
            if vol.instance_root == instance_id and vol.present:
                self._guard(vol, partial(self._import_root, vol, instance_id))

    def export(self, volume_id: str) -> VolumeExport:
        return self.backend.export(volume_id, self.host)

    def unexport(self, volume_id: str) -> None:
        try:
            self.backend.unexport(volume_id, self.host)
        except StratusError as exc:
            log.warning("unexport of volume %s failed: %s", volume_id, exc)

    # -- internals ------------------------------------------------------------------------

    def _one(self, vol: DesiredVolume) -> ObservedVolume:
        failed = self.failed.get(vol.id)
        if failed is not None and failed[0] == vol.generation:
            return self.observe(vol, error=failed[1])
        if vol.present:
            return self._guard(vol, lambda: self._make(vol))
        return self._guard(vol, lambda: self._remove(vol))

    def _guard(self, vol: DesiredVolume, step: Callable[[], None]) -> ObservedVolume:
        try:
            step()
        except ServiceUnavailable:
            raise
        except StratusError as exc:
            self.failed[vol.id] = (vol.generation, exc.message)
            return self.observe(vol, error=exc.message)
        self.failed.pop(vol.id, None)
        return self.observe(vol)

    def _make(self, vol: DesiredVolume) -> None:
        backend = self.backend
        if not backend.exists(vol.id):
            if vol.instance_root is not None:
                return  # made by keep_root when the instance is deleted
            if vol.snapshot_of is not None:
                backend.snapshot(vol.snapshot_of, vol.id)
            elif vol.clone_of is not None:
                backend.clone(vol.clone_of, vol.id)
            else:
                image = self.images.ensure(vol.image) if vol.image is not None else None
                # the fake image cache names files it never writes: those volumes are blank
                source = image if image is not None and image.exists() else None
                backend.create(vol.id, vol.size_bytes, from_image=source)
        if not vol.readonly and backend.size(vol.id) < vol.size_bytes:
            backend.grow(vol.id, vol.size_bytes)

    def _remove(self, vol: DesiredVolume) -> None:
        if not self.backend.exists(vol.id):
            return
        for host in self.backend.info(vol.id).exports:
            self.backend.unexport(vol.id, host)
        self.backend.delete(vol.id)

    def _import_root(self, vol: DesiredVolume, instance_id: str) -> None:
        if self.backend.exists(vol.id):
            return
        root = self.root_disk(instance_id)
        if not root.exists():  # the fake workspace: nothing to copy
            self.backend.create(vol.id, vol.size_bytes)
            return
        size = max(vol.size_bytes, _virtual_size(root))
        self.backend.create(vol.id, math.ceil(size / MiB) * MiB, from_image=root)

    def observe(self, vol: DesiredVolume, *, error: str = "") -> ObservedVolume:
        """What the backend holds of ``vol`` now."""
        try:
            exists = self.backend.exists(vol.id)
            size = self.backend.size(vol.id) if exists else 0
        except StratusError as exc:
            exists, size, error = False, 0, error or exc.message
        return ObservedVolume(
            id=vol.id,
            exists=exists,
            observed_generation=vol.generation,
            size_bytes=size,
            error=error,
        )


class VolumeLink(ControllerLink):
    """The controller link of an agent with a volume pool (see the module docstring)."""

    def __init__(
        self, url: str, credential: str = "", *, pool: StoragePool | None = None, **kw: Any
    ) -> None:
        super().__init__(url, credential, **kw)
        #: set once the image cache (which needs this link) exists
        self.pool = pool
        self._observed: list[ObservedVolume] = []

    def desired(self, *, since: int, wait: float) -> DesiredState:
        state = super().desired(since=since, wait=wait)
        if self.pool is not None:
            self._observed = self.pool.converge(state.volumes)
        return state

    def report(self, report: Report) -> ReportAck:
        if self.pool is None:
            return super().report(report)
        wanted = self.pool.desired
        # a volume kept by keep_root in this pass is reported as it is now
        observed = [
            self.pool.observe(wanted[o.id]) if o.id in wanted and not o.error else o
            for o in self._observed
        ]
        report.volumes = observed
        return super().report(report)

    def heartbeat(self, beat: Heartbeat) -> None:
        if self.pool is not None:
            try:
                beat.usage.update(self.pool.usage())
            except StratusError as exc:
                log.warning("volume pool: %s", exc.message)
        super().heartbeat(beat)


@dataclass
class InstanceVolumes:
    """What the reconciler asks about an instance's volumes."""

    pool: StoragePool

    def define_time(self, inst: DesiredInstance) -> tuple[VolumeAttachment, ...]:
        return tuple(self._attachment(inst, a.volume_id) for a in inst.volumes)

    def boot_disk(self, inst: DesiredInstance) -> DiskSpec | None:
        if inst.boot_volume is None:
            return None
        export = self.pool.export(inst.boot_volume)
        return DiskSpec(
            path=export.path if export.path is not None else Path(),
            format=export.format,
            target="vda",
            boot_order=1,
            network=export.network,
        )

    def sync(
        self, driver: ComputeDriver, inst: DesiredInstance
    ) -> tuple[list[str], dict[str, str]]:
        """Hot-plug what is missing, unplug what is extra; the attached ids and the errors."""
        if not isinstance(driver, HotplugDriver):
            return [a.volume_id for a in inst.volumes], {}
        if driver.state(inst.id) is PowerState.MISSING:
            return [], {}
        errors: dict[str, str] = {}
        wanted = {a.volume_id: a for a in inst.volumes}
        for have in driver.attached_volumes(inst.id):
            want = wanted.get(have.volume_id)
            if want is None or want.index != have.index:
                try:
                    driver.detach_volume(inst.id, have)
                except StratusError as exc:
                    errors[have.volume_id] = exc.message
                    continue
                self.pool.unexport(have.volume_id)
        attached = {a.volume_id for a in driver.attached_volumes(inst.id)}
        for volume_id in wanted.keys() - attached:
            try:
                driver.attach_volume(inst.id, self._attachment(inst, volume_id))
            except StratusError as exc:
                errors[volume_id] = exc.message
                self.pool.unexport(volume_id)
        return sorted(a.volume_id for a in driver.attached_volumes(inst.id)), errors

    def attached(self, driver: ComputeDriver, instance_id: str) -> list[str]:
        if not isinstance(driver, HotplugDriver):
            return []
        try:
            return [a.volume_id for a in driver.attached_volumes(instance_id)]
        except StratusError:
            return []

    def released(self, volume_ids: list[str], instance_id: str) -> None:
        """The domain is gone: withdraw its exports and keep its root disk if asked."""
        for volume_id in volume_ids:
            self.pool.unexport(volume_id)
        self.pool.keep_root(instance_id)

    def _attachment(self, inst: DesiredInstance, volume_id: str) -> VolumeAttachment:
        want = next(a for a in inst.volumes if a.volume_id == volume_id)
        export = self.pool.export(volume_id)
        return export.attachment(want.index, readonly=want.readonly, shareable=want.shareable)


def _virtual_size(path: Path) -> int:
    proc = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return 0
    return int(json.loads(proc.stdout).get("virtual-size", 0))


def make_backend(settings: NodeSettings) -> VolumeBackend | None:
    """The node's volume backend from its settings (None: ``volume_backend = "none"``)."""
    name = settings.volume_backend
    if name == "none":
        return None
    if settings.driver == "fake" or name == "fake":
        return get_volume_backend("fake")
    root = Path(settings.volume_dir) if settings.volume_dir else settings.state_dir / "volumes"
    if name == "iscsi":
        backend = get_volume_backend(
            "iscsi", root=root, portal_host=settings.volume_portal,
            portal_port=settings.volume_portal_port,
        )  # fmt: skip
        restore = getattr(backend, "restore_exports", None)
        if restore is not None:
            restore()  # tgtd keeps targets in memory only
        return backend
    return get_volume_backend(name, root=root, format=settings.volume_format)


def attach_pool(
    settings: NodeSettings,
    link: ControllerLink,
    images: Images,
    root_disk: Callable[[str], Path],
) -> InstanceVolumes | None:
    """Give ``link`` (a :class:`VolumeLink`) the node's pool; what the reconciler uses."""
    backend = make_backend(settings)
    if backend is None or not isinstance(link, VolumeLink):
        return None
    link.pool = StoragePool(backend, EXPORT_HOST, images, root_disk)
    return InstanceVolumes(link.pool)
