"""Build a recipe into a bootable qcow2 plus its metadata JSON, with a build cache.

``build_recipe(recipe_path, output, cache_dir=..., progress=...)``:

1. validate the recipe; find the mirror (``base.mirror`` or the one apt uses) and fingerprint the
   suite (the sha256 of its ``InRelease`` file, which changes whenever any package version does);
2. the cache key is the recipe's canonical JSON + that fingerprint + the builder's own code: a
   cached image with that key is copied to ``output`` at once;
3. otherwise debootstrap a root tree, run the chroot steps of :func:`chroot_steps` (each isolated
   by :mod:`stratuslab.appliances.chroot`), make an MBR + ext4 + extlinux disk from the tree
   (:mod:`stratuslab.appliances.disk`), convert it to qcow2 under a temporary name and rename it.

A failing step raises :class:`ImageError` with the step's name and output; the work tree is
removed and no image (in the cache or at ``output``) is left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stratuslab.appliances import aptsources, chroot, disk, recipe
from stratuslab.appliances.recipe import (
    Cleanup,
    CloudInit,
    DebootstrapRecipe,
    Recipe,
    TinyRecipe,
    load_recipe,
    recipe_digest,
)
from stratuslab.errors import DriverError, InvalidInput

#: Bumped whenever the image layout changes in a way the cache key would not see.
BUILD_FORMAT = 1
MIB = 1024 * 1024
ROOT_LABEL = "root"
BUILD_APT_CONF = "/etc/apt/apt.conf.d/90stratuslab-build"
CLOUD_CFG = "/etc/cloud/cloud.cfg.d/90_stratuslab.cfg"
_TOOLS = ("debootstrap", "unshare", "chroot", *disk.DISK_TOOLS)
_CODE = (recipe, chroot, disk, aptsources)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """One chroot step: a ``/bin/sh -e`` script, its stdin, and whether it uses the deb cache."""

    title: str
    script: str
    stdin: bytes | None = None
    uses_deb_cache: bool = False


@dataclass(frozen=True)
class BuildResult:
    """The image written, its metadata (also written next to it) and whether it was cached."""

    image: Path
    metadata_path: Path
    metadata: dict[str, Any]
    cached: bool


# --------------------------------------------------------------------------------------------
# Public API


def build_recipe(
    recipe_path: Path, output: Path, *, cache_dir: Path, progress: Progress | None = None
) -> BuildResult:
    """Build (or take from ``cache_dir``) the recipe's image; write it and its metadata."""
    say = progress or _quiet
    parsed = load_recipe(recipe_path)
    if isinstance(parsed, TinyRecipe):
        return _build_tiny(parsed, output, cache_dir=cache_dir, say=say)
    return _build_debootstrap(parsed, output, cache_dir=cache_dir, say=say)


def chroot_steps(spec: DebootstrapRecipe, *, root_uuid: str) -> list[Step]:
    """The steps run in the debootstrapped tree, in order (pure: the same recipe, same steps)."""
    steps = [
        Step("prepare the build", _prepare_script()),
        Step(
            f"install {len(spec.all_packages())} packages",
            "apt-get update -q\napt-get install -y -q " + _words(spec.all_packages()),
            uses_deb_cache=True,
        ),
    ]
    if spec.locale is not None:
        steps.append(Step(f"generate locale {spec.locale}", _locale_script(spec.locale)))
    steps += [Step(f"add user {user.name}", _useradd(user)) for user in spec.users]
    files = [(f.path, f.content.encode(), f.mode) for f in spec.files]
    if spec.cloud_init.enabled:
        files.append((CLOUD_CFG, cloud_init_cfg(spec.cloud_init).encode(), "0644"))
    files += _system_files(spec, root_uuid=root_uuid)
    steps += [
        Step(f"write {path}", _install_file(path, mode), stdin=data) for path, data, mode in files
    ]
    steps.append(
        Step(
            "configure the boot loader",
            _extlinux_script(),
            stdin=_extlinux_template(spec, root_uuid),
        )
    )
    if spec.services:
        steps.append(Step("enable services", "systemctl enable " + _words(spec.services)))
    steps += [Step(f"command {n}: {_preview(cmd)}", cmd) for n, cmd in enumerate(spec.commands, 1)]
    steps.append(Step("clean up", cleanup_script(spec.cleanup)))
    return steps


def cloud_init_cfg(cfg: CloudInit) -> str:
    """The cloud.cfg.d drop-in: datasources, short timeouts, root login by key."""
    doc: dict[str, Any] = {
        "datasource_list": list(cfg.datasources),
        "datasource": {
            name: {"timeout": cfg.timeout, "max_wait": cfg.max_wait, "retries": 1}
            for name in cfg.datasources
            if name != "None"
        },
        "disable_root": not cfg.root_login,
    }
    return "# Written by the StratusLab appliance builder\n" + json.dumps(doc, indent=2) + "\n"


def cleanup_script(rules: Cleanup) -> str:
    """The original StratusLab's clean-up rules as a shell script (run last, in the chroot)."""
    lines = [
        f"rm -f /usr/sbin/policy-rc.d {BUILD_APT_CONF}",
        "rm -f /etc/udev/rules.d/70-persistent-net.rules /root/.bash_history",
        "rm -rf /tmp/* /var/tmp/*",
        ": > /etc/resolv.conf",
    ]
    if rules.ssh_host_keys:
        lines.append("rm -f /etc/ssh/ssh_host_*")
    if rules.root_authorized_keys:
        lines.append("rm -f /root/.ssh/authorized_keys")
    if rules.machine_id:
        lines += [
            ": > /etc/machine-id",
            "[ -L /var/lib/dbus/machine-id ] || rm -f /var/lib/dbus/machine-id",
        ]
    if rules.cloud_init_state:
        lines.append("rm -rf /var/lib/cloud/*")
    if rules.apt_lists:
        lines += ["apt-get clean", "rm -rf /var/lib/apt/lists/*"]
    if rules.logs:
        lines += [
            r"find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete",
            "find /var/log -type f -exec truncate -s 0 {} +",
            "rm -rf /var/log/journal/*",
        ]
    return "\n".join(lines) + "\n"


def cache_key(spec: DebootstrapRecipe, *, mirror: str, fingerprint: str) -> str:
    """A hex digest of everything that goes into the image."""
    doc = {
        "format": BUILD_FORMAT,
        "recipe": recipe_digest(spec),
        "mirror": mirror,
        "suite_release": fingerprint,
        "code": {
            **{module.__name__: _sha256_file(Path(str(module.__file__))) for module in _CODE},
            __name__: _sha256_file(Path(__file__)),
        },
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def suite_fingerprint(mirror: str, suite: str) -> str:
    """sha256 of the suite's ``InRelease`` (or ``Release``): it lists every package index."""
    errors: list[str] = []
    for name in ("InRelease", "Release"):
        url = f"{mirror}/dists/{suite}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return hashlib.sha256(response.read()).hexdigest()
        except (urllib.error.URLError, OSError) as exc:
            errors.append(f"{url}: {exc}")
    raise DriverError(
        f"cannot read the release file of {suite} from {mirror}: {'; '.join(errors)}",
        hint="check the network and the mirror (base.mirror, or apt's sources.list)",
    )


# --------------------------------------------------------------------------------------------
# Builders


def _build_debootstrap(
    spec: DebootstrapRecipe, output: Path, *, cache_dir: Path, say: Progress
) -> BuildResult:
    disk.check_tools(_TOOLS, what=f"the {spec.name} appliance")
    mirror = spec.base.mirror or aptsources.apt_mirror(spec.base.suite)
    say(f"mirror {mirror}, suite {spec.base.suite}")
    key = cache_key(spec, mirror=mirror, fingerprint=suite_fingerprint(mirror, spec.base.suite))
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"{spec.name}-{key[:16]}.qcow2"
    with _locked(cache_dir / f".{spec.name}.lock"):
        hit = cached.exists() and cached.with_suffix(".json").exists()
        if hit:
            say(f"reusing cached image {cached.name}")
        else:
            _build_image(spec, cached, mirror=mirror, key=key, cache_dir=cache_dir, say=say)
        metadata = json.loads(cached.with_suffix(".json").read_text())
    disk.copy_atomically(cached, output)
    return BuildResult(output, _write_metadata(output, metadata), metadata, cached=hit)


def _build_image(
    spec: DebootstrapRecipe, target: Path, *, mirror: str, key: str, cache_dir: Path, say: Progress
) -> None:
    debs = cache_dir / "debs"
    (debs / "partial").mkdir(parents=True, exist_ok=True)
    (cache_dir / "work").mkdir(exist_ok=True)
    root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"stratuslab-appliance:{key}"))
    steps = chroot_steps(spec, root_uuid=root_uuid)
    total = len(steps) + 3
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-", dir=cache_dir / "work") as tmp:
        root = Path(tmp) / "root"
        say(f"[1/{total}] debootstrap {spec.base.suite} ({spec.base.variant})")
        chroot.run_isolated(
            _debootstrap_args(spec, root, mirror=mirror, debs=debs), name="debootstrap"
        )
        for number, step in enumerate(steps, start=2):
            say(f"[{number}/{total}] {step.title}")
            binds = [(debs, "/var/cache/apt/archives")] if step.uses_deb_cache else []
            chroot.run_in_root(root, step.script, name=step.title, stdin=step.stdin, binds=binds)
        facts = _inspect(root, spec)
        say(f"[{total - 1}/{total}] make a {spec.disk_size_mib} MiB disk and install extlinux")
        raw = Path(tmp) / "disk.raw"
        _check_fits(root, spec.disk_size_mib)
        disk.make_disk(
            raw, root, size_mib=spec.disk_size_mib, root_uuid=root_uuid, label=ROOT_LABEL
        )
        say(f"[{total}/{total}] convert to {'compressed ' if spec.compress else ''}qcow2")
        disk.convert_to_qcow2(raw, target, compress=spec.compress)
    metadata = _metadata(spec, target, facts=facts, key=key, mirror=mirror)
    _write_json(target.with_suffix(".json"), metadata)


def _build_tiny(spec: TinyRecipe, output: Path, *, cache_dir: Path, say: Progress) -> BuildResult:
    from stratuslab.appliances.tiny import build_tiny

    image = build_tiny(
        output, cache_dir=cache_dir / "tiny", size_mib=spec.disk_size_mib, progress=say
    )
    metadata = {
        **_common_metadata(spec, image),
        "os": "stratuslab-tiny",
        "os_version": "1",
        "os_name": "StratusLab tiny (busybox + dropbear, Debian kernel)",
        "arch": "amd64",
        "virtual_size": spec.disk_size_mib * MIB,
    }
    return BuildResult(image, _write_metadata(image, metadata), metadata, cached=False)


# --------------------------------------------------------------------------------------------
# Step scripts (pure)


def _prepare_script() -> str:
    apt_conf = (
        'APT::Install-Recommends "false";\\n'
        'APT::Install-Suggests "false";\\n'
        'APT::Sandbox::User "root";\\n'
        'Dpkg::Options { "--force-confdef"; "--force-confold"; };\\n'
    )
    return (
        "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d\n"
        "chmod 0755 /usr/sbin/policy-rc.d\n"
        f"printf '{apt_conf}' > {BUILD_APT_CONF}\n"
    )


def _locale_script(locale: str) -> str:
    charset = locale.split(".", 1)[1]
    if locale.startswith("C."):
        return f"update-locale LANG={shlex.quote(locale)}\n"
    line = shlex.quote(f"{locale} {charset}")
    return f"echo {line} >> /etc/locale.gen\nlocale-gen\nupdate-locale LANG={shlex.quote(locale)}\n"


def _useradd(user: recipe.UserSpec) -> str:
    args = ["useradd", "--create-home", "--shell", user.shell]
    if user.uid is not None:
        args += ["--uid", str(user.uid)]
    if user.groups:
        args += ["--groups", ",".join(user.groups)]
    return _words([*args, user.name])


def _install_file(path: str, mode: str) -> str:
    return f"install -D -m {int(mode, 8):04o} /dev/stdin {shlex.quote(path)}\n"


def _system_files(spec: DebootstrapRecipe, *, root_uuid: str) -> list[tuple[str, bytes, str]]:
    fstab = f"UUID={root_uuid} / ext4 defaults,errors=remount-ro 0 1\n"
    hosts = (
        f"127.0.0.1 localhost\n127.0.1.1 {spec.name}\n::1 localhost ip6-localhost ip6-loopback\n"
    )
    return [
        ("/etc/fstab", fstab.encode(), "0644"),
        ("/etc/hostname", f"{spec.name}\n".encode(), "0644"),
        ("/etc/hosts", hosts.encode(), "0644"),
    ]


def _extlinux_template(spec: DebootstrapRecipe, root_uuid: str) -> bytes:
    cmdline = f"root=UUID={root_uuid} ro {spec.kernel_cmdline}".strip()
    conf = disk.extlinux_conf(
        cmdline,
        label=spec.name,
        kernel="/boot/vmlinuz-@RELEASE@",
        initrd="/boot/initrd.img-@RELEASE@",
    )
    return conf.encode()


def _extlinux_script() -> str:
    return (
        "release=$(ls /boot | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1)\n"
        '[ -n "$release" ] || { echo "no kernel in /boot: check the kernel" >&2; exit 1; }\n'
        '[ -f "/boot/initrd.img-$release" ] || { echo "no initrd for $release" >&2; exit 1; }\n'
        "mkdir -p /boot/extlinux\n"
        'sed "s/@RELEASE@/$release/g" > /boot/extlinux/extlinux.conf\n'
    )


def _debootstrap_args(spec: DebootstrapRecipe, root: Path, *, mirror: str, debs: Path) -> list[str]:
    args = ["debootstrap", f"--components={','.join(spec.base.components)}", f"--cache-dir={debs}"]
    if spec.base.variant != "-":
        args.append(f"--variant={spec.base.variant}")
    return [*args, spec.base.suite, str(root), mirror]


# --------------------------------------------------------------------------------------------
# Facts and metadata


_INSPECT = (
    "dpkg --print-architecture\necho ---\ncat /etc/os-release\necho ---\n"
    "ls /boot | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1\necho ---\n"
    "dpkg-query -W -f '${Package}\\t${Version}\\n'\n"
)


def _inspect(root: Path, spec: DebootstrapRecipe) -> dict[str, Any]:
    """Architecture, os-release, kernel release and package versions, read in the chroot."""
    output = chroot.run_in_root(root, _INSPECT, name="inspect the image").output
    arch, os_release, kernel, packages = output.split("---\n")
    release = dict(line.split("=", 1) for line in os_release.splitlines() if "=" in line)
    versions = dict(line.split("\t", 1) for line in packages.splitlines() if "\t" in line)
    return {
        "arch": arch.strip(),
        "os": release.get("ID", "").strip('"'),
        "os_version": release.get("VERSION_ID", "").strip('"'),
        "os_name": release.get("PRETTY_NAME", "").strip('"'),
        "kernel": kernel.strip(),
        "packages": {name: versions[name] for name in spec.all_packages() if name in versions},
        "package_count": len(versions),
    }


def _metadata(
    spec: DebootstrapRecipe, image: Path, *, facts: dict[str, Any], key: str, mirror: str
) -> dict[str, Any]:
    return {
        **_common_metadata(spec, image),
        **facts,
        "virtual_size": spec.disk_size_mib * MIB,
        "suite": spec.base.suite,
        "mirror": mirror,
        "cache_key": key,
    }


def _common_metadata(spec: Recipe, image: Path) -> dict[str, Any]:
    return {
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "builder": spec.builder,
        "format": "qcow2",
        "sha256": _sha256_file(image),
        "size": image.stat().st_size,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "recipe_sha256": recipe_digest(spec),
    }


def _write_metadata(image: Path, metadata: dict[str, Any]) -> Path:
    path = image.with_suffix(".json")
    _write_json(path, metadata)
    return path


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Small helpers


def _check_fits(root: Path, size_mib: int) -> None:
    used = int(disk.run(["du", "-sx", "--block-size=1M", str(root)]).split()[0])
    # ext4 metadata, the journal and a margin for the first boot's logs
    if used > size_mib * 0.85 - 64:
        raise InvalidInput(
            f"the image's files take {used} MiB, too much for a {size_mib} MiB disk",
            hint=f"raise disk_size_mib in the recipe to at least {int((used + 64) / 0.85) + 1}",
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build per recipe and cache at a time (a second one waits, then reuses the image)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _words(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(word) for word in words) + "\n"


def _preview(command: str, limit: int = 50) -> str:
    first = command.strip().splitlines()[0] if command.strip() else ""
    return first if len(first) <= limit else first[:limit] + "..."


def _quiet(_message: str) -> None:
    return None
