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
* Volumes of a pool that exports to other hosts (iSCSI, a shared mount) are exported to the
  hosts the controller lists (``DesiredVolume.exports``) and reported with the URL those
  hosts open; an instance here attaches another host's volume at the URL it is given
  (``DesiredAttachment.remote``), without its own pool. So does an instance booting from
  another host's volume (``DesiredInstance.boot_volume_remote``: :func:`boot_disk`); until
  the URL is there it is not defined (:func:`boot_wait_reason`).
* A pool's volume can also be made from the root disk of a stopped instance of this host
  (``DesiredVolume.root_of``).
* :func:`ensure_tgtd` starts the ``tgtd`` of an iSCSI pool when none answers; only a daemon
  this node started is ever stopped (:meth:`StoragePool.close`, when idle).
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
from urllib.parse import urlsplit

from stratuslab.agent.controller import ControllerLink
from stratuslab.config import NodeSettings
from stratuslab.drivers.base import (
    ComputeDriver,
    DiskSpec,
    HotplugDriver,
    NetworkSource,
    VolumeAttachment,
)
from stratuslab.drivers.storage.base import VolumeBackend, VolumeExport
from stratuslab.drivers.storage.registry import get_volume_backend
from stratuslab.drivers.storage.tgt import Tgtadm, TgtDaemon
from stratuslab.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable, StratusError
from stratuslab.schemas.agent import (
    DesiredAttachment,
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
POOL_SHARED = "volume_shared"
#: the tgtd a node's agent started (STATE_DIR/tgtd.pid)
TGTD_PID_FILE = "tgtd.pid"
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
    #: the tgtd this node started for its iSCSI pool (stopped by :meth:`close` when idle)
    tgtd: NodeTgtd | None = None
    #: volume id -> (url, format) other hosts open it at; why exporting it to them failed
    _remote: dict[str, tuple[str, str]] = field(default_factory=dict, init=False)
    _export_errors: dict[str, str] = field(default_factory=dict, init=False)

    def converge(self, wanted: list[DesiredVolume]) -> list[ObservedVolume]:
        self.desired = {v.id: v for v in wanted}
        observed = []
        for vol in wanted:
            obs = self._one(vol)
            if vol.present and obs.exists and not obs.error:
                self._export_remote(vol)
                obs = self.observe(vol)
            observed.append(obs)
        return observed

    def usage(self) -> dict[str, float]:
        return {
            POOL_FREE: float(self.backend.free_bytes()),
            POOL_LIVE_SNAPSHOT: 1.0 if self.backend.features.live_snapshot else 0.0,
            POOL_SHARED: 1.0 if self.backend.features.shared else 0.0,
        }

    def close(self) -> None:
        """The agent stops: stop the tgtd it started unless a guest still uses it."""
        started, self.tgtd = self.tgtd, None
        if started is not None:
            started.stop_if_idle()

    def keep_root(self, instance_id: str) -> None:
        """Copy an instance's root disk into the volume the controller made for it."""
        for vol in self.desired.values():
            if vol.instance_root == instance_id and vol.present:
                self._guard(vol, partial(self._import_root, vol, instance_id))

    def export(self, volume_id: str) -> VolumeExport:
        return self.backend.export(volume_id, self.host)

    def unexport(self, volume_id: str) -> None:
        try:
            if not self.backend.exists(volume_id):
                return  # a volume of another host's pool (attached over iSCSI)
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
            if vol.root_of is not None:
                self._import_root(vol, vol.root_of, saving=True)
            elif vol.instance_root is not None:
                return  # made by keep_root when the instance is deleted
            elif vol.snapshot_of is not None:
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

    def _import_root(self, vol: DesiredVolume, instance_id: str, *, saving: bool = False) -> None:
        """Copy (flatten) the root disk of ``instance_id`` into volume ``vol``. The domain
        is shut off: a running QEMU holds a write lock on the disk and qemu-img refuses it."""
        if self.backend.exists(vol.id):
            return
        root = self.root_disk(instance_id)
        if not root.exists():
            if saving and root.parts[:2] != ("/", "fake"):
                raise NotFound(
                    f"instance {instance_id} has no root disk on this host ({root})",
                    hint="is the instance still on this host? save it where it runs",
                )
            # the fake workspace names files it never writes: nothing to copy
            self.backend.create(vol.id, vol.size_bytes)
            return
        size = max(vol.size_bytes, _virtual_size(root))
        self.backend.create(vol.id, math.ceil(size / MiB) * MiB, from_image=root)

    def _export_remote(self, vol: DesiredVolume) -> None:
        """Export ``vol`` to the other hosts attaching it; withdraw it from the others."""
        self._export_errors.pop(vol.id, None)
        try:
            have = set(self.backend.info(vol.id).exports) - {self.host}
            for host in sorted(set(vol.exports) - have):
                export = self.backend.export(vol.id, host)
                self._remote[vol.id] = (export.url, export.format)
        except StratusError as exc:
            log.warning("exporting volume %s to %s failed: %s", vol.id, vol.exports, exc)
            self._export_errors[vol.id] = exc.message
            return
        for host in sorted(have - set(vol.exports)):
            try:
                self.backend.unexport(vol.id, host)
            except StratusError as exc:  # still logged in: retried on the next pass
                log.warning("withdrawing volume %s from %s: %s", vol.id, host, exc.message)

    def observe(self, vol: DesiredVolume, *, error: str = "") -> ObservedVolume:
        """What the backend holds of ``vol`` now (and where other hosts open it)."""
        remote: list[str] = []
        try:
            exists = self.backend.exists(vol.id)
            size = self.backend.size(vol.id) if exists else 0
            if exists:
                remote = sorted(set(self.backend.info(vol.id).exports) - {self.host})
            if remote and vol.id not in self._remote:  # exported before this agent started
                export = self.backend.export(vol.id, remote[0])
                self._remote[vol.id] = (export.url, export.format)
        except StratusError as exc:
            exists, size, error = False, 0, error or exc.message
        url, fmt = self._remote.get(vol.id, ("", "")) if remote else ("", "")
        return ObservedVolume(
            id=vol.id,
            exists=exists,
            observed_generation=vol.generation,
            size_bytes=size,
            error=error,
            exported_to=remote,
            export_url=url,
            export_format=fmt,
            export_error=self._export_errors.get(vol.id, ""),
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
        #: the pool's volumes in the last whole state (an ``unchanged`` answer has none)
        self._volumes: list[DesiredVolume] | None = None

    def desired(self, *, since: int, wait: float, brief: bool = False) -> DesiredState:
        state = super().desired(since=since, wait=wait, brief=brief)
        if not state.unchanged:
            self._volumes = state.volumes
        if self.pool is not None and self._volumes is not None:
            self._observed = self.pool.converge(self._volumes)
        return state

    def always_report(self) -> bool:
        """Every report carries the pool's volumes."""
        return self.pool is not None

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
        made = (self._attachment(inst, a.volume_id) for a in inst.volumes)
        return tuple(a for a in made if a is not None)

    def boot_disk(self, inst: DesiredInstance) -> DiskSpec | None:
        if inst.boot_volume is None:
            return None
        if inst.boot_volume_remote:
            return remote_boot_disk(inst)
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
        for volume_id in sorted(wanted.keys() - attached):
            try:
                attachment = self._attachment(inst, volume_id)
                if attachment is None:
                    continue  # its host has not exported it to this one yet
                driver.attach_volume(inst.id, attachment)
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

    def _attachment(self, inst: DesiredInstance, volume_id: str) -> VolumeAttachment | None:
        want = next(a for a in inst.volumes if a.volume_id == volume_id)
        if want.remote:
            return remote_attachment(want) if want.url else None
        export = self.pool.export(volume_id)
        return export.attachment(want.index, readonly=want.readonly, shareable=want.shareable)


def remote_attachment(want: DesiredAttachment) -> VolumeAttachment:
    """The attachment of a volume of another host's pool, opened at ``want.url``:
    ``iscsi://portal:port/<iqn>/<lun>`` (QEMU's initiator) or ``file:///path`` (a mount
    shared by every host)."""
    path, network = _open_url(want.volume_id, want.url)
    return VolumeAttachment(
        volume_id=want.volume_id,
        index=want.index,
        format=want.format,
        path=path,
        network=network,
        readonly=want.readonly,
        shareable=want.shareable,
    )


def boot_disk(volumes: InstanceVolumes | None, inst: DesiredInstance) -> DiskSpec | None:
    """The boot disk of ``inst`` if it boots from a volume: of another host's pool (a node
    without a pool of its own can open it too) or of this node's pool."""
    if inst.boot_volume and inst.boot_volume_remote:
        return remote_boot_disk(inst)
    return volumes.boot_disk(inst) if volumes is not None else None


def boot_wait_reason(inst: DesiredInstance) -> str:
    """Why ``inst`` cannot be defined yet ("": it can): its boot volume is in another host's
    pool, which has not exported it to this host yet."""
    if inst.boot_volume and inst.boot_volume_remote and not inst.boot_volume_url:
        return f"waiting for the host of boot volume {inst.boot_volume} to export it to this host"
    return ""


def remote_boot_disk(inst: DesiredInstance) -> DiskSpec:
    """The boot disk (``vda``) of an instance booting from a volume of another host's pool,
    opened at ``inst.boot_volume_url`` (no pool of this node involved)."""
    volume_id = inst.boot_volume or ""
    if not inst.boot_volume_url:
        raise Conflict(  # boot_wait_reason keeps the reconciler from getting here
            f"boot volume {volume_id} is not exported to this host yet",
            hint="its host exports it on its next pass",
        )
    path, network = _open_url(volume_id, inst.boot_volume_url)
    return DiskSpec(
        path=path if path is not None else Path(),
        format=inst.boot_volume_format,
        target="vda",
        boot_order=1,
        network=network,
    )


def _open_url(volume_id: str, url_text: str | None) -> tuple[Path | None, NetworkSource | None]:
    url = urlsplit(url_text or "")
    if url.scheme == "iscsi" and url.hostname and url.path.strip("/"):
        target = url.path.strip("/")
        return None, NetworkSource("iscsi", target, url.hostname, url.port or 3260)
    if url.scheme == "file" and url.path:
        return Path(url.path), None
    raise InvalidInput(
        f"volume {volume_id}: cannot open {url_text!r}",
        hint="the volume's host exports iscsi:// or file:// URLs only",
    )


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
            control_port=settings.volume_tgtd_control_port or None,
        )  # fmt: skip
        restore = getattr(backend, "restore_exports", None)
        if restore is not None:
            restore()  # tgtd keeps targets in memory only
        return backend
    options: dict[str, Any] = {"format": settings.volume_format}
    if settings.volume_shared:
        options.update(shared=True, hostname=settings.hostname or None)
    return get_volume_backend(name, root=root, **options)


@dataclass
class NodeTgtd:
    """A ``tgtd`` this node's agent started for its iSCSI pool, recorded in ``pid_file`` so
    that the next agent (after a restart) knows it is the node's own."""

    daemon: TgtDaemon
    pid_file: Path

    def stop_if_idle(self) -> bool:
        """Stop it unless an initiator is logged in (a running guest keeps its disk; the
        next agent adopts the daemon); True if stopped."""
        try:
            busy = [t.iqn for t in self.daemon.tgtadm.targets().values() if t.sessions]
        except StratusError:
            busy = []
        if busy:
            log.info("leaving tgtd (pid %s) running: %d volume(s) in use", self.daemon.pid,
                     len(busy))  # fmt: skip
            return False
        log.info("stopping tgtd (pid %s), which this node started", self.daemon.pid)
        self.daemon.stop()
        self.pid_file.unlink(missing_ok=True)
        return True


def ensure_tgtd(settings: NodeSettings) -> NodeTgtd | None:
    """Make sure the iSCSI pool has a ``tgtd`` to talk to: one that answers already (the
    system service, or one an earlier agent on this node started: adopted), or a new one on
    ``volume_portal:volume_portal_port``, started in its own session. Returns the daemon if
    this node started it (only those are ever stopped), None for someone else's."""
    control = settings.volume_tgtd_control_port
    pid_file = settings.state_dir / TGTD_PID_FILE
    recorded = _recorded_pid(pid_file)
    if Tgtadm(control or None).ready():
        adopted = None if recorded is None else TgtDaemon.adopt(recorded, control_port=control)
        if adopted is None:
            pid_file.unlink(missing_ok=True)
            return None
        log.info("tgtd (pid %s) started earlier by this node is running", recorded)
        return NodeTgtd(adopted, pid_file)
    daemon = TgtDaemon(
        portal_host=settings.volume_portal,
        portal_port=settings.volume_portal_port,
        control_port=control,
        log=settings.state_dir / "tgtd.log",
    )
    daemon.start(detach=True)
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(f"{daemon.pid}\n")
    tmp.replace(pid_file)
    log.info(
        "started tgtd (pid %s) on %s:%s", daemon.pid, settings.volume_portal,
        settings.volume_portal_port,
    )  # fmt: skip
    return NodeTgtd(daemon, pid_file)


def _recorded_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def attach_pool(
    settings: NodeSettings,
    link: ControllerLink,
    images: Images,
    root_disk: Callable[[str], Path],
) -> InstanceVolumes | None:
    """Give ``link`` (a :class:`VolumeLink`) the node's pool; what the reconciler uses."""
    if not isinstance(link, VolumeLink) or settings.volume_backend == "none":
        return None
    real_iscsi = settings.volume_backend == "iscsi" and settings.driver != "fake"
    tgtd = ensure_tgtd(settings) if real_iscsi else None
    try:
        backend = make_backend(settings)
    except BaseException:
        if tgtd is not None:
            tgtd.stop_if_idle()
        raise
    if backend is None:
        return None
    link.pool = StoragePool(backend, EXPORT_HOST, images, root_disk, tgtd=tgtd)
    return InstanceVolumes(link.pool)


def close_pool(link: ControllerLink) -> None:
    """The agent stops (``stratus-node`` calls this last): see :meth:`StoragePool.close`."""
    if isinstance(link, VolumeLink) and link.pool is not None:
        link.pool.close()
