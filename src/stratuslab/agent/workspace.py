"""Per-instance files on a node: root overlay, seed ISO, console log, local state.

Layout: ``STATE_DIR/instances/<id>/{root.qcow2, seed.iso, console.log, state.json}``.
Every step is idempotent and writes through a temporary name, so a crash at any moment
leaves either nothing or a complete file.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol

from stratuslab.agent.networks import guest_network
from stratuslab.context.build import build_context
from stratuslab.context.iso import write_seed_iso
from stratuslab.context.spec import ContextMethod, ContextSpec
from stratuslab.drivers.base import DiskSpec
from stratuslab.errors import DriverError
from stratuslab.schemas.agent import DesiredInstance


def context_spec(inst: DesiredInstance) -> ContextSpec:
    return ContextSpec(
        instance_id=inst.id,
        hostname=inst.hostname,
        ssh_keys=tuple(inst.ssh_keys),
        user_data=base64.b64decode(inst.user_data) if inst.user_data else None,
        extra=dict(inst.context),
        network=guest_network(inst),
    )


class Workspace(Protocol):
    def prepare(self, inst: DesiredInstance, base: Path) -> tuple[DiskSpec, ...]: ...
    def remove(self, instance_id: str) -> None: ...
    def instance_ids(self) -> set[str]: ...
    def console_log(self, instance_id: str) -> Path: ...
    def read_state(self, instance_id: str) -> dict[str, Any]: ...
    def write_state(self, instance_id: str, state: dict[str, Any]) -> None: ...


class LocalWorkspace:
    def __init__(self, root: Path) -> None:
        self.root = root / "instances"
        self.root.mkdir(parents=True, exist_ok=True)
        for p in (root, self.root):
            p.chmod(0o755)  # QEMU (user libvirt-qemu) must reach the disks
        check_traversable(self.root)

    def dir(self, instance_id: str) -> Path:
        return self.root / instance_id

    def console_log(self, instance_id: str) -> Path:
        return self.dir(instance_id) / "console.log"

    def instance_ids(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if p.is_dir()}

    def prepare(self, inst: DesiredInstance, base: Path) -> tuple[DiskSpec, ...]:
        d = self.dir(inst.id)
        d.mkdir(exist_ok=True)
        d.chmod(0o755)
        root = d / "root.qcow2"
        if not root.exists():
            # the cache may have converted the image: the base file's suffix is its format
            _overlay(base, base.suffix.lstrip(".") or inst.image.format, root)
            self.write_state(inst.id, {**self.read_state(inst.id), "base": str(base)})
        seed = d / "seed.iso"
        if not seed.exists():
            label, files = build_context(ContextMethod(inst.context_method), context_spec(inst))
            write_seed_iso(files, seed, label=label)
        return (
            DiskSpec(path=root, format="qcow2", target="vda", boot_order=1),
            DiskSpec(path=seed, format="raw", target="vdb", readonly=True),
        )

    def remove(self, instance_id: str) -> None:
        shutil.rmtree(self.dir(instance_id), ignore_errors=True)

    def bases_in_use(self) -> set[Path]:
        """The cached base of every instance this host has (the image cache keeps them)."""
        bases = (self.read_state(i).get("base") for i in self.instance_ids())
        return {Path(b) for b in bases if b}

    def read_state(self, instance_id: str) -> dict[str, Any]:
        path = self.dir(instance_id) / "state.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def write_state(self, instance_id: str, state: dict[str, Any]) -> None:
        d = self.dir(instance_id)
        if not d.exists():
            return
        tmp = d / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(d / "state.json")


class SaveTarget(Protocol):
    def upload_saved_image(self, image_id: str, path: Path) -> None: ...
    def report_save_failure(self, image_id: str, reason: str) -> None: ...


class RootDiskSaver:
    """Flattens a stopped instance's root disk (overlay + base) and sends it to the controller."""

    def __init__(self, workspace: LocalWorkspace, target: SaveTarget) -> None:
        self.workspace = workspace
        self.target = target

    def save(self, instance_id: str, image_id: str) -> None:
        d = self.workspace.dir(instance_id)
        flat = d / f"save-{image_id}.qcow2"
        try:
            _qemu_img("convert", "-O", "qcow2", str(d / "root.qcow2"), str(flat))
        except DriverError as exc:
            self.target.report_save_failure(image_id, exc.message)
            return
        try:
            self.target.upload_saved_image(image_id, flat)
        finally:
            flat.unlink(missing_ok=True)


def check_traversable(path: Path) -> None:
    """QEMU runs as an unprivileged user: every directory above the disks must let it pass."""
    for directory in [path.resolve(), *path.resolve().parents]:
        if not directory.stat().st_mode & 0o001:
            raise DriverError(
                f"{directory} is not searchable by other users, so QEMU (user libvirt-qemu) "
                "cannot reach the instance disks below it",
                hint=f"chmod o+x {directory}, or choose another --state-dir",
                code="state_dir_not_traversable",
            )


def _qemu_img(*args: str) -> None:
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DriverError(
            f"qemu-img {args[0]} failed: {proc.stderr.strip()}",
            hint="check that qemu-utils is installed and the state directory is writable",
        )


def _overlay(base: Path, base_format: str, dest: Path) -> None:
    tmp = dest.with_suffix(".tmp")
    try:
        _qemu_img("create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(tmp))
    except DriverError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.chmod(0o644)
    tmp.replace(dest)


class FakeWorkspace:
    """In memory, for simulation and fast tests."""

    def __init__(self) -> None:
        self._states: dict[str, dict[str, Any]] = {}

    def prepare(self, inst: DesiredInstance, base: Path) -> tuple[DiskSpec, ...]:
        self._states.setdefault(inst.id, {})
        return (DiskSpec(path=Path(f"/fake/{inst.id}/root.qcow2"), boot_order=1),)

    def remove(self, instance_id: str) -> None:
        self._states.pop(instance_id, None)

    def instance_ids(self) -> set[str]:
        return set(self._states)

    def console_log(self, instance_id: str) -> Path:
        return Path(f"/fake/{instance_id}/console.log")

    def read_state(self, instance_id: str) -> dict[str, Any]:
        return dict(self._states.get(instance_id, {}))

    def write_state(self, instance_id: str, state: dict[str, Any]) -> None:
        if instance_id in self._states:
            self._states[instance_id] = dict(state)
