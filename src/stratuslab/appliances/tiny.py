"""The tiny appliance: a bootable qcow2 disk built from Debian packages only.

It plays the role ttylinux played for the original StratusLab: a guest that boots in seconds
under TCG, reads a NoCloud seed, starts an SSH server and says so on the serial console with one
line starting with :data:`READY_MARKER`.

The disk has an MBR (syslinux ``mbr.bin``) and one bootable ext4 partition holding extlinux, the
Debian cloud kernel, a small initramfs (busybox and the kernel modules for virtio, CD-ROM, ISO 9660
and the ACPI power button) and the root filesystem (busybox, dropbear and its libraries). The guest
side is the shell scripts next to this module in ``tiny/``.

Building needs root (a loop device is mounted to run ``extlinux --install``), ``apt-get`` with a
Debian mirror, e2fsprogs, extlinux, syslinux-common and qemu-utils. The result is cached in
``cache_dir`` under a key made of the package versions, the guest scripts and the build options.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stratuslab.appliances import disk
from stratuslab.appliances.disk import copy_atomically as _copy_atomically
from stratuslab.appliances.disk import extlinux_conf as extlinux_conf  # re-exported
from stratuslab.appliances.disk import mbr as mbr  # re-exported
from stratuslab.appliances.disk import run as _run
from stratuslab.errors import DriverError, ImageError, InvalidInput

#: The line the guest prints on its serial console once SSH answers and the seed was applied:
#: ``STRATUSLAB-TINY READY hostname=<name> instance-id=<id or none>``.
READY_MARKER = "STRATUSLAB-TINY READY"

#: The Debian cloud kernel unpacks itself above 16 MiB and needs about 51 MiB there: with 64 MiB
#: of RAM the guest resets in a loop. 96 MiB boots; give 128 MiB for headroom.
MIN_MEMORY_MIB = 96

#: Bumped whenever the layout of the image changes in a way the cache key would not see.
BUILD_FORMAT = 1

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
USERLAND_PACKAGES = (
    "busybox-static",
    "dropbear-bin",
    "libc6",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
)
#: Drivers the guest needs; each must be a module of the kernel package or built in.
KERNEL_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "virtio_rng",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "isofs",
    "button",
    "evdev",
)
DROPBEAR_BINARIES = ("usr/sbin/dropbear", "usr/bin/dropbearkey")
SCRIPTS_DIR = Path(__file__).with_name("tiny")
SCRIPT_NAMES = ("initramfs-init", "rcS", "rcK", "inittab", "udhcpc.script", "acpi-power")
MIN_SIZE_MIB = 64
_TOOLS = ("apt-get", "apt-cache", "dpkg-deb", *disk.DISK_TOOLS)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Package:
    """A Debian binary package pinned to the version apt would install."""

    name: str
    version: str


# --------------------------------------------------------------------------------------------
# Public API


def build_tiny(
    output: Path,
    *,
    cache_dir: Path,
    size_mib: int = 256,
    progress: Progress | None = None,
) -> Path:
    """Build (or take from ``cache_dir``) the tiny appliance and write it to ``output``."""
    say = progress or _quiet
    if size_mib < MIN_SIZE_MIB:
        raise InvalidInput(
            f"tiny appliance size {size_mib} MiB is too small",
            hint=f"use at least {MIN_SIZE_MIB} MiB",
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    packages = resolve_packages()
    key = cache_key(packages, builder_inputs(), size_mib=size_mib)
    cached = cache_dir / f"tiny-{key[:16]}.qcow2"
    if not cached.exists():
        disk.check_tools(_TOOLS, what="the tiny appliance")
        say(f"building tiny appliance {cached.name}")
        debs = download_debs(packages, cache_dir / "debs", say)
        _build_image(cached, debs=debs, key=key, size_mib=size_mib, work_parent=cache_dir, say=say)
        _write_manifest(cached.with_suffix(".json"), packages, key)
    else:
        say(f"reusing cached tiny appliance {cached.name}")
    _copy_atomically(cached, output)
    return output


def kernel_cmdline(root_uuid: str) -> str:
    """The kernel command line: serial console last (it becomes /dev/console), quiet boot."""
    return f"root=UUID={root_uuid} console=tty0 console=ttyS0,115200n8 quiet loglevel=3 panic=10"


def module_depends(ko: bytes) -> list[str]:
    """The ``depends=`` list from a kernel module's ``.modinfo`` section."""
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
    if match is None or not match.group(1):
        return []
    return [name.decode().replace("-", "_") for name in match.group(1).split(b",")]


def load_order(wanted: Sequence[str], depends: Callable[[str], Sequence[str]]) -> list[str]:
    """Modules to load, dependencies first (``depends`` gives a module's direct dependencies)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ImageError(
                f"kernel module dependency cycle at {name}", hint="check the kernel package"
            )
        visiting.add(name)
        for dep in depends(name):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def cache_key(packages: Sequence[Package], scripts: Mapping[str, bytes], *, size_mib: int) -> str:
    """A hex digest of everything that goes into the image."""
    doc = {
        "format": BUILD_FORMAT,
        "size_mib": size_mib,
        "packages": sorted([p.name, p.version] for p in packages),
        "scripts": {
            name: hashlib.sha256(data).hexdigest() for name, data in sorted(scripts.items())
        },
        "modules": list(KERNEL_MODULES),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def builder_inputs() -> dict[str, bytes]:
    """The guest scripts and the builder's own code: a change in any must not reuse an image."""
    return {
        **read_scripts(),
        "tiny.py": Path(__file__).read_bytes(),
        "disk.py": Path(disk.__file__).read_bytes(),
    }


def read_scripts() -> dict[str, bytes]:
    """The guest-side scripts shipped in ``tiny/`` by name."""
    return {name: (SCRIPTS_DIR / name).read_bytes() for name in SCRIPT_NAMES}


def newc_archive(root: Path, *, extra_nodes: Mapping[str, tuple[int, int, int]]) -> bytes:
    """A reproducible ``newc`` cpio archive of ``root``, plus device nodes (mode, major, minor)."""
    out = bytearray()
    for ino, path in enumerate(sorted(root.rglob("*")), start=1):
        st = path.lstat()
        data = os.readlink(path).encode() if path.is_symlink() else b""
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
        out += _newc_entry(path.relative_to(root).as_posix(), st.st_mode, data, ino=ino)
    for offset, (name, (mode, major, minor)) in enumerate(sorted(extra_nodes.items())):
        out += _newc_entry(name, mode, b"", ino=100000 + offset, rdev=(major, minor))
    out += _newc_entry("TRAILER!!!", 0, b"", ino=0)
    return bytes(out.ljust((len(out) + 511) // 512 * 512, b"\0"))


# --------------------------------------------------------------------------------------------
# Packages


def resolve_packages() -> list[Package]:
    """The kernel (the real package behind the cloud metapackage) and the userland, pinned."""
    deps = _run(["apt-cache", "depends", KERNEL_METAPACKAGE])
    kernels = re.findall(r"Depends: (linux-image-\S+-cloud-amd64)", deps)
    if not kernels:
        raise DriverError(
            f"{KERNEL_METAPACKAGE} does not depend on a linux-image-*-cloud-amd64 package",
            hint="run apt-get update; check the Debian mirror in /etc/apt/sources.list",
        )
    names = (kernels[0], *USERLAND_PACKAGES)
    versions = candidate_versions(_run(["apt-cache", "policy", *names]))
    missing = [name for name in names if name not in versions]
    if missing:
        raise DriverError(
            f"apt has no installable version of {', '.join(missing)}",
            hint="run apt-get update; check the Debian mirror in /etc/apt/sources.list",
        )
    return [Package(name, versions[name]) for name in names]


def candidate_versions(policy: str) -> dict[str, str]:
    """Package name to candidate version, from ``apt-cache policy`` output."""
    found = re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)$", policy, re.MULTILINE)
    return {name: version for name, version in found if version != "(none)"}


def download_debs(packages: Sequence[Package], deb_dir: Path, say: Progress) -> list[Path]:
    """The .deb of each package in ``deb_dir``, fetched with ``apt-get download`` if missing."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if _find_deb(p, deb_dir) is None]
    if missing:
        say(f"downloading {len(missing)} Debian package(s)")
        _run(["apt-get", "download", *(f"{p.name}={p.version}" for p in missing)], cwd=deb_dir)
    found = [_find_deb(p, deb_dir) for p in packages]
    paths = [path for path in found if path is not None]
    if len(paths) != len(packages):
        raise DriverError(
            f"apt-get download did not produce every package in {deb_dir}",
            hint="run apt-get update and retry",
        )
    return paths


def _find_deb(package: Package, deb_dir: Path) -> Path | None:
    version = package.version.replace(":", "%3a")
    path = deb_dir / f"{package.name}_{version}_amd64.deb"
    return path if path.exists() else None


# --------------------------------------------------------------------------------------------
# Image assembly


def _build_image(
    target: Path, *, debs: Sequence[Path], key: str, size_mib: int, work_parent: Path, say: Progress
) -> None:
    with tempfile.TemporaryDirectory(prefix="tiny-build-", dir=work_parent) as tmp:
        work = Path(tmp)
        staging = work / "staging"
        say("unpacking packages")
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(staging)])
        root = work / "root"
        root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"stratuslab-tiny:{key}"))
        say("assembling root filesystem and initramfs")
        _assemble_root(staging, root, root_uuid)
        raw = work / "disk.raw"
        say("making disk and installing extlinux")
        disk.make_disk(raw, root, size_mib=size_mib, root_uuid=root_uuid, label="stratus-tiny")
        say("converting to compressed qcow2")
        disk.convert_to_qcow2(raw, target)


def _assemble_root(staging: Path, root: Path, root_uuid: str) -> None:
    kernel_release = _kernel_release(staging)
    for sub in ("boot/extlinux", "etc/init.d", "etc/dropbear", "etc/acpi/PWRF", "root", "var/log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("dev", "proc", "sys", "run", "tmp", "usr/bin", "usr/sbin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "root").chmod(0o700)
    (root / "tmp").chmod(0o1777)
    _install_busybox(staging, root)
    _install_dropbear(staging, root)
    _install_scripts(root)
    _write_etc(root)
    shutil.copyfile(staging / f"boot/vmlinuz-{kernel_release}", root / "boot/vmlinuz")
    initrd = _initramfs(staging, kernel_release, root.parent / "initramfs")
    (root / "boot/initrd.img").write_bytes(initrd)
    (root / "boot/extlinux/extlinux.conf").write_text(extlinux_conf(kernel_cmdline(root_uuid)))


def _kernel_release(staging: Path) -> str:
    kernels = sorted(staging.glob("boot/vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageError(
            f"expected one kernel in the kernel package, found {len(kernels)}",
            hint=f"check the {KERNEL_METAPACKAGE} package",
        )
    return kernels[0].name.removeprefix("vmlinuz-")


def _install_busybox(staging: Path, root: Path) -> None:
    busybox = root / "bin/busybox"
    busybox.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(staging / "bin/busybox", busybox)
    for applet in _run([str(busybox), "--list-full"]).split():
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(busybox, link.parent))


def _install_dropbear(staging: Path, root: Path) -> None:
    loader = "lib64/ld-linux-x86-64.so.2"
    needed = {loader}
    for binary in DROPBEAR_BINARIES:
        needed.update(_shared_libraries(staging, binary, loader=loader))
    for rel in sorted(needed) + list(DROPBEAR_BINARIES):
        _copy_with_links(staging, root, rel)


def _copy_with_links(staging: Path, root: Path, rel: str) -> None:
    """Copy ``rel`` from ``staging`` to ``root``, recreating any symlinks on the way."""
    source, dest = staging / rel, root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not source.is_symlink():
        shutil.copy2(source, dest)
        return
    target = os.readlink(source)
    if not dest.is_symlink():
        dest.symlink_to(target)
    absolute = Path(target) if target.startswith("/") else Path("/", rel).parent / target
    _copy_with_links(staging, root, os.path.normpath(absolute).lstrip("/"))


def _resolve_in(staging: Path, rel: str) -> Path:
    """The real file behind ``rel`` in ``staging``, absolute links taken relative to it."""
    path = staging / rel
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = staging / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise ImageError(f"symlink loop at {rel} in the unpacked packages", hint="check the packages")


def _shared_libraries(staging: Path, binary: str, *, loader: str) -> set[str]:
    """Libraries ``binary`` loads, resolved by the packages' own ld.so inside ``staging``."""
    libdirs = [staging / "lib/x86_64-linux-gnu", staging / "usr/lib/x86_64-linux-gnu"]
    listing = _run(
        [
            str(_resolve_in(staging, loader)),
            "--inhibit-cache",
            "--library-path",
            ":".join(map(str, libdirs)),
            "--list",
            str(staging / binary),
        ]
    )
    libs: set[str] = set()
    for name, path in re.findall(r"^\s*(\S+) => (\S+)", listing, re.MULTILINE):
        resolved = Path(path)
        if not resolved.is_relative_to(staging):
            raise ImageError(
                f"{binary} needs {name}, which no unpacked package provides",
                hint="add the Debian package holding it to USERLAND_PACKAGES",
            )
        libs.add(resolved.relative_to(staging).as_posix())
    return libs


def _install_scripts(root: Path) -> None:
    targets = {
        "rcS": "etc/init.d/rcS",
        "rcK": "etc/init.d/rcK",
        "inittab": "etc/inittab",
        "udhcpc.script": "etc/udhcpc.script",
        "acpi-power": "etc/acpi/PWRF/00000080",
    }
    for name, rel in targets.items():
        shutil.copyfile(SCRIPTS_DIR / name, root / rel)
        (root / rel).chmod(0o644 if name == "inittab" else 0o755)


def _write_etc(root: Path) -> None:
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
        "etc/shadow": "root:*:19000:0:99999:7:::\n",
        "etc/group": "root:x:0:\ntty:x:5:\n",
        "etc/shells": "/bin/sh\n/bin/ash\n",
        "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        "etc/hosts": "127.0.0.1 localhost\n",
        "etc/hostname": "stratus-tiny\n",
        "etc/fstab": "",
        "etc/resolv.conf": "",
        "etc/os-release": 'NAME="StratusLab tiny"\nID=stratuslab-tiny\n',
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    (root / "etc/shadow").chmod(0o600)
    (root / "var/run").symlink_to("../run")


def _initramfs(staging: Path, kernel_release: str, tree: Path) -> bytes:
    """busybox, the first-stage init and the kernel modules, as a gzipped newc archive."""
    (tree / "lib/modules").mkdir(parents=True)
    for sub in ("dev", "proc", "sys", "newroot"):
        (tree / sub).mkdir()
    _install_busybox(staging, tree)
    init = tree / "init"
    shutil.copyfile(SCRIPTS_DIR / "initramfs-init", init)
    init.chmod(0o755)
    modules = _copy_modules(staging / "lib/modules" / kernel_release, tree / "lib/modules")
    (tree / "lib/modules/load-order").write_text("".join(f"{m}\n" for m in modules))
    archive = newc_archive(tree, extra_nodes={"dev/console": (0o020600, 5, 1)})
    return gzip.compress(archive, compresslevel=9, mtime=0)


def _copy_modules(moddir: Path, dest: Path) -> list[str]:
    """Copy the wanted modules and their dependencies; return their file names in load order."""
    files = {ko.stem.replace("-", "_"): ko for ko in moddir.rglob("*.ko")}
    builtin = _builtin_modules(moddir)
    for name in KERNEL_MODULES:
        if name not in files and name not in builtin:
            raise ImageError(
                f"kernel {moddir.name} has no driver {name}, neither built in nor as a module",
                hint=f"use a kernel with {name}; check the {KERNEL_METAPACKAGE} package",
            )

    def depends(name: str) -> list[str]:
        return module_depends(files[name].read_bytes()) if name in files else []

    order = [name for name in load_order(KERNEL_MODULES, depends) if name in files]
    for name in order:
        shutil.copyfile(files[name], dest / files[name].name)
    return [files[name].name for name in order]


def _builtin_modules(moddir: Path) -> set[str]:
    builtin = moddir / "modules.builtin"
    lines = builtin.read_text().split() if builtin.exists() else []
    return {Path(line).stem.replace("-", "_") for line in lines}


# --------------------------------------------------------------------------------------------
# Small helpers


def _write_manifest(path: Path, packages: Sequence[Package], key: str) -> None:
    doc = {"key": key, "packages": {p.name: p.version for p in packages}}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _newc_entry(
    name: str, mode: int, data: bytes, *, ino: int, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
    head = header + encoded
    head = head.ljust((len(head) + 3) // 4 * 4, b"\0")
    return head + data.ljust((len(data) + 3) // 4 * 4, b"\0")


def _quiet(_message: str) -> None:
    return None
