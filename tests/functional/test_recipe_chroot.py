"""The chroot step runner on a busybox root: mounts and processes never outlive a step."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from stratuslab.appliances.chroot import run_in_root
from stratuslab.errors import ImageError

pytestmark = pytest.mark.functional

BUSYBOX = shutil.which("busybox")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    if BUSYBOX is None:
        pytest.skip("needs busybox-static")
    tree = tmp_path / "root"
    for sub in ("bin", "proc", "sys", "dev", "run", "tmp", "etc"):
        (tree / sub).mkdir(parents=True)
    shutil.copy2(BUSYBOX, tree / "bin/busybox")
    for applet in ("sh", "cat", "ls", "sleep", "mount", "echo", "grep", "readlink"):
        (tree / "bin" / applet).symlink_to("busybox")
    return tree


def _mounts_under(path: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if str(path) in line]


def _processes_in(path: Path, *, grace: float = 5.0) -> list[int]:
    """Processes whose root is ``path``, after giving a dying namespace ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while (found := _scan(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _scan(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == str(path):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_step_sees_its_mounts_and_stdin_and_they_vanish(root: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    script = (
        "cat > /etc/from-stdin\n"
        "grep -c ' /proc \\| /sys \\| /dev \\| /run ' /proc/self/mounts\n"
        "ls /dev/null /dev/urandom /dev/stdin >/dev/null\n"
        "echo through-bind > /mnt/shared/file\n"
        "sleep 1000 &\n"
        "echo done\n"
    )
    result = run_in_root(
        root, script, name="probe", stdin=b"hello\n", binds=[(shared, "/mnt/shared")]
    )
    assert result.output.split() == ["4", "done"]
    assert (root / "etc/from-stdin").read_bytes() == b"hello\n"
    assert (shared / "file").read_text() == "through-bind\n"
    assert _mounts_under(root) == []
    assert _processes_in(root) == []  # the background sleep died with the step
    assert not (root / "dev/null").exists()  # /dev was a private tmpfs


def test_failing_step_reports_its_output(root: Path) -> None:
    with pytest.raises(ImageError) as info:
        run_in_root(root, "echo before-failure\nfalse\necho never", name="my step")
    error = info.value
    assert error.code == "build_step_failed"
    assert "build step 'my step' failed with status 1" in error.message
    assert "before-failure" in error.message and "never" not in error.message
    assert error.details["step"] == "my step"
    assert _mounts_under(root) == []


def test_step_timeout_kills_everything(root: Path) -> None:
    with pytest.raises(ImageError, match="took more than 1 s"):
        run_in_root(root, "sleep 30", name="slow", timeout=1)
    assert _processes_in(root) == []
    assert _mounts_under(root) == []
