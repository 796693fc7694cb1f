"""The ``iscsi`` volume backend, the original StratusLab default: file-backed LUNs over iSCSI.

The data are raw files kept by a :class:`~stratuslab.drivers.storage.file.FileVolumeBackend`
(so snapshots and clones are reflinks on XFS/btrfs, full copies elsewhere). Exporting a volume
makes it a target ``iqn.2011-01.eu.stratuslab:<volume id>`` with LUN 1 in the user-space
``tgtd`` (Debian ``tgt``), reachable only from the initiator addresses of the hosts it is
exported to. The compute host opens ``iscsi://<portal>/<iqn>/1`` with QEMU's own initiator
(qemu-block-extra): no kernel initiator, no kernel module, and any host can attach it, which
is what lets instances move between hosts.

``tgtd`` keeps its targets in memory only. The volumes' records remember their exports, and
:meth:`IscsiVolumeBackend.restore_exports` re-creates the targets after ``tgtd`` restarted
(the node agent calls it when it starts).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from stratuslab.drivers.base import NetworkSource
from stratuslab.drivers.storage.base import (
    BackendFeatures,
    VolumeExport,
    VolumeInfo,
    check_volume_id,
)
from stratuslab.drivers.storage.file import FileVolumeBackend
from stratuslab.drivers.storage.tgt import Target, Tgtadm
from stratuslab.errors import Conflict, InvalidInput

#: The naming authority of the original StratusLab targets.
IQN_PREFIX = "iqn.2011-01.eu.stratuslab"
LUN = 1


class IscsiVolumeBackend:
    """A :class:`~stratuslab.drivers.storage.base.VolumeBackend` exporting LUNs with ``tgtd``.

    ``root`` holds the data (raw files); ``portal_host``/``portal_port`` is where initiators
    reach ``tgtd``; ``control_port`` picks the ``tgtd`` to manage (``tgtd -C``; None: the
    system one). ``reflink`` is passed to the file backend.
    """

    name = "iscsi"

    def __init__(
        self,
        root: Path,
        *,
        portal_host: str = "127.0.0.1",
        portal_port: int = 3260,
        control_port: int | None = None,
        reflink: bool | None = None,
        iqn_prefix: str = IQN_PREFIX,
    ) -> None:
        self.files = FileVolumeBackend(root, format="raw", reflink=reflink, shared=True)
        self.portal_host, self.portal_port = portal_host, portal_port
        self.iqn_prefix = iqn_prefix
        self.tgtadm = Tgtadm(control_port)
        self._lock = threading.Lock()

    @property
    def features(self) -> BackendFeatures:
        return BackendFeatures(
            cow_clone=self.files.features.cow_clone,
            live_snapshot=self.files.features.live_snapshot,
            shared=True,
        )

    def iqn(self, volume_id: str) -> str:
        return f"{self.iqn_prefix}:{check_volume_id(volume_id)}"

    # -- the VolumeBackend protocol ---------------------------------------------------------

    def create(
        self, volume_id: str, size_bytes: int, *, from_image: Path | None = None
    ) -> VolumeInfo:
        return self.files.create(volume_id, size_bytes, from_image=from_image)

    def delete(self, volume_id: str) -> None:
        self.files.delete(volume_id)

    def grow(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        return self.files.grow(volume_id, size_bytes)

    def snapshot(self, src: str, dst: str) -> VolumeInfo:
        return self.files.snapshot(src, dst)

    def clone(self, src: str, dst: str) -> VolumeInfo:
        return self.files.clone(src, dst)

    def export(self, volume_id: str, host: str) -> VolumeExport:
        address = _address(host)
        with self._lock:
            info = self.files.info(volume_id)
            self._ensure_target(info, address)
            self.files.export(volume_id, host)
        return VolumeExport(
            volume_id=volume_id,
            host=host,
            format="raw",
            readonly=info.readonly,
            network=NetworkSource(
                "iscsi", f"{self.iqn(volume_id)}/{LUN}", self.portal_host, self.portal_port
            ),
        )

    def unexport(self, volume_id: str, host: str) -> None:
        address = _address(host)
        with self._lock:
            info = self.files.info(volume_id)
            target = self.tgtadm.targets().get(self.iqn(volume_id))
            others = {_address(h) for h in info.exports if h != host}
            if target is not None and address not in others:
                self._withdraw(target, address, last=not others)
            self.files.unexport(volume_id, host)

    def free_bytes(self) -> int:
        return self.files.free_bytes()

    def exists(self, volume_id: str) -> bool:
        return self.files.exists(volume_id)

    def size(self, volume_id: str) -> int:
        return self.files.size(volume_id)

    def info(self, volume_id: str) -> VolumeInfo:
        return self.files.info(volume_id)

    def list_volumes(self) -> list[VolumeInfo]:
        return self.files.list_volumes()

    # -- extensions -------------------------------------------------------------------------

    def restore_exports(self) -> int:
        """Re-create the targets of every exported volume (after ``tgtd`` restarted)."""
        restored = 0
        with self._lock:
            for info in self.files.list_volumes():
                for host in info.exports:
                    self._ensure_target(info, _address(host))
                    restored += 1
        return restored

    # -- internals --------------------------------------------------------------------------

    def _ensure_target(self, info: VolumeInfo, address: str) -> None:
        """The target of ``info`` with its LUN, open to ``address``; undone if it fails."""
        iqn = self.iqn(info.volume_id)
        targets = self.tgtadm.targets()
        target = targets.get(iqn)
        created = target is None
        if target is None:
            tid = max((t.tid for t in targets.values()), default=0) + 1
            self.tgtadm.new_target(tid, iqn)
            target = Target(tid, iqn)
        try:
            if LUN not in target.luns:
                path = self.files.data_path(info.volume_id, info.format)
                self.tgtadm.new_lun(target.tid, LUN, path, readonly=info.readonly)
            if address not in target.acl:
                self.tgtadm.bind(target.tid, address)
        except BaseException:
            if created:
                self.tgtadm.delete_target(target.tid)
            raise

    def _withdraw(self, target: Target, address: str, *, last: bool) -> None:
        if address in target.sessions:
            raise Conflict(
                f"volume target {target.iqn} is still in use by an initiator at {address}",
                hint="detach the volume from its instance first",
            )
        if last:
            self.tgtadm.delete_target(target.tid)
        elif address in target.acl:
            self.tgtadm.unbind(target.tid, address)


def _address(host: str) -> str:
    """The IPv4 address initiators on ``host`` connect from (what the target's ACL lists)."""
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise InvalidInput(
            f"cannot resolve host {host!r}", hint="give a host name or address that resolves"
        ) from exc
