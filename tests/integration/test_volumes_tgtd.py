"""The node agent and ``tgtd``: an agent with the iSCSI backend starts a ``tgtd`` when none
answers, adopts the one it started after a restart, stops it when it exits and nothing uses
it, and never stops one it did not start. A real ``tgtd`` (Debian ``tgt``) on a private
control port and portal; an initiator is played by ``qemu-io`` through QEMU's own iSCSI
initiator. Every daemon started here is stopped by PID."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratuslab.agent.image_cache import FakeImageCache
from stratuslab.agent.volumes import (
    TGTD_PID_FILE,
    VolumeLink,
    attach_pool,
    close_pool,
    ensure_tgtd,
)
from stratuslab.config import NodeSettings
from stratuslab.drivers.storage.iscsi import IscsiVolumeBackend
from stratuslab.drivers.storage.tgt import SOCKET_DIR, Tgtadm, TgtDaemon
from tests.contract.test_volume_backend import free_control_port, free_port, private_tgtd

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("tgtd", "tgtadm", "qemu-io")),
    reason="needs root, tgtd/tgtadm (Debian tgt) and qemu-io",
)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[NodeSettings]:
    s = NodeSettings(
        state_dir=tmp_path / "node",
        volume_backend="iscsi",
        volume_dir=str(tmp_path / "pool"),
        volume_portal="127.0.0.1",
        volume_portal_port=free_port(),
        volume_tgtd_control_port=free_control_port(),
    )
    s.state_dir.mkdir()
    yield s
    # safety net: a daemon a failed test left behind, stopped by its recorded PID
    pid_file = s.state_dir / TGTD_PID_FILE
    if pid_file.exists():
        daemon = TgtDaemon.adopt(int(pid_file.read_text()), control_port=s.volume_tgtd_control_port)
        if daemon is not None:
            daemon.stop()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_agent_starts_adopts_and_stops_its_tgtd(settings: NodeSettings) -> None:
    control = settings.volume_tgtd_control_port
    assert not Tgtadm(control).ready()
    link = VolumeLink("http://controller.invalid")
    volumes = attach_pool(settings, link, FakeImageCache(), lambda iid: Path("/nonexistent"))
    assert volumes is not None and link.pool is not None
    started = link.pool.tgtd
    assert started is not None and started.daemon.pid is not None
    pid = started.daemon.pid
    assert Tgtadm(control).ready() and alive(pid)
    assert os.getsid(pid) == pid  # its own session: it outlives the agent's process group
    assert (settings.state_dir / TGTD_PID_FILE).read_text().strip() == str(pid)

    # the pool works through it: a volume exported to this host has a target
    backend = link.pool.backend
    assert isinstance(backend, IscsiVolumeBackend)
    vol = str(uuid.uuid4())
    backend.create(vol, 8 * MiB)
    backend.export(vol, "127.0.0.1")
    assert backend.iqn(vol) in Tgtadm(control).targets()

    # the agent restarts (SIGKILL: nothing ran at exit): the next one adopts the daemon
    # and restores the exports without starting another tgtd
    link2 = VolumeLink("http://controller.invalid")
    attach_pool(settings, link2, FakeImageCache(), lambda iid: Path("/nonexistent"))
    assert link2.pool is not None and link2.pool.tgtd is not None
    assert link2.pool.tgtd.daemon.pid == pid
    assert backend.iqn(vol) in Tgtadm(control).targets()

    # exiting with nothing logged in: the daemon the node started goes, with its socket
    close_pool(link2)
    assert not alive(pid) and not Tgtadm(control).ready()
    assert not (SOCKET_DIR / f"socket.{control}").exists()
    assert not (settings.state_dir / TGTD_PID_FILE).exists()
    # its volume keeps the export in its record, for the next start
    assert backend.info(vol).exports == ("127.0.0.1",)


def test_tgtd_in_use_is_left_running_at_exit(settings: NodeSettings, tmp_path: Path) -> None:
    control = settings.volume_tgtd_control_port
    link = VolumeLink("http://controller.invalid")
    attach_pool(settings, link, FakeImageCache(), lambda iid: Path("/nonexistent"))
    assert link.pool is not None and link.pool.tgtd is not None
    pid = link.pool.tgtd.daemon.pid
    assert pid is not None
    vol = str(uuid.uuid4())
    link.pool.backend.create(vol, 8 * MiB)
    url = link.pool.backend.export(vol, "127.0.0.1").url
    # an initiator (QEMU's) logged in, as a running guest's would be
    initiator = subprocess.Popen(
        ["qemu-io", "-f", "raw", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        iqn = f"iqn.2011-01.eu.stratuslab:{vol}"
        deadline = 100
        while not Tgtadm(control).targets()[iqn].sessions and deadline:
            assert initiator.poll() is None, "qemu-io could not log in"
            deadline -= 1
            subprocess.run(["sleep", "0.1"], check=True)
        assert Tgtadm(control).targets()[iqn].sessions
        close_pool(link)
        assert alive(pid) and Tgtadm(control).ready()  # the guest keeps its disk
        assert (settings.state_dir / TGTD_PID_FILE).exists()
    finally:
        assert initiator.stdin is not None
        initiator.stdin.close()
        initiator.wait(10)
    # once nothing uses it, the next agent's exit stops it
    link2 = VolumeLink("http://controller.invalid")
    attach_pool(settings, link2, FakeImageCache(), lambda iid: Path("/nonexistent"))
    close_pool(link2)
    assert not alive(pid)


def test_a_tgtd_the_node_did_not_start_is_never_stopped(
    settings: NodeSettings, tmp_path: Path
) -> None:
    with private_tgtd(tmp_path / "tgtd.log") as theirs:
        ours = NodeSettings(
            **{
                **settings.__dict__,
                "volume_portal_port": theirs.portal_port,
                "volume_tgtd_control_port": theirs.control_port,
            }
        )
        assert ensure_tgtd(ours) is None  # it answers: used as it is
        link = VolumeLink("http://controller.invalid")
        attach_pool(ours, link, FakeImageCache(), lambda iid: Path("/nonexistent"))
        assert link.pool is not None and link.pool.tgtd is None
        close_pool(link)
        assert theirs.pid is not None and alive(theirs.pid) and theirs.tgtadm.ready()
        assert not (ours.state_dir / TGTD_PID_FILE).exists()


def test_a_stale_pid_file_is_not_trusted(settings: NodeSettings, tmp_path: Path) -> None:
    """A recorded PID that is not our tgtd any more (reused) is neither adopted nor killed."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (settings.state_dir / TGTD_PID_FILE).write_text(f"{sleeper.pid}\n")
        assert TgtDaemon.adopt(sleeper.pid, control_port=free_control_port()) is None
        started = ensure_tgtd(settings)  # nothing answers: a new daemon, a new record
        assert started is not None and started.daemon.pid != sleeper.pid
        assert started.stop_if_idle()
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
