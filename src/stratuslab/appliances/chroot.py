"""Run build steps inside an image's root tree, isolated so that nothing can outlive a step.

Every step runs as ``unshare --mount --pid --fork`` + ``chroot``: the mounts it needs (``/proc``,
a read-only ``/sys``, a private ``/dev`` on tmpfs with a few device nodes and its own ``devpts``,
``/run`` on tmpfs, optional bind mounts) exist only in the step's private mount namespace, so the
kernel removes them when the step ends, even if the builder is killed; and every process the step
started (a daemon a package's postinst left behind) dies with the step's PID namespace. The
host's ``/dev`` is never bind-mounted, so removing a failed tree cannot touch it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stratuslab.errors import DriverError, ImageError

STEP_TIMEOUT = 1800.0
OUTPUT_TAIL = 40
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_UNSHARE = ("unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private")

#: Mounts made in the step's own namespace, then ``chroot``. Arguments: root, script, then
#: pairs of (host directory, directory inside the root) to bind-mount.
_SETUP = r"""
set -eu
root=$1 script=$2
shift 2
case "$root" in /?*) ;; *) echo "refusing root '$root'" >&2; exit 1 ;; esac
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t tmpfs -o mode=0755,size=16m,nosuid devtmp "$root/dev"
mknod -m 0666 "$root/dev/null" c 1 3
mknod -m 0666 "$root/dev/zero" c 1 5
mknod -m 0666 "$root/dev/full" c 1 7
mknod -m 0666 "$root/dev/random" c 1 8
mknod -m 0666 "$root/dev/urandom" c 1 9
mknod -m 0666 "$root/dev/tty" c 5 0
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/run"
mkdir -p "$root/run/lock"
while [ $# -ge 2 ]; do
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    shift 2
done
exec chroot "$root" /bin/sh -ec "$script"
"""


@dataclass(frozen=True)
class StepResult:
    """What a step printed (stdout and stderr interleaved)."""

    name: str
    output: str


def run_in_root(
    root: Path,
    script: str,
    *,
    name: str,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    binds: Sequence[tuple[Path, str]] = (),
    timeout: float = STEP_TIMEOUT,
) -> StepResult:
    """Run ``script`` with ``/bin/sh -e`` chrooted in ``root``; raise naming ``name`` on failure."""
    environment = {
        "PATH": PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        **(env or {}),
    }
    bind_args = [arg for host, inside in binds for arg in (str(host), inside)]
    args = [*_UNSHARE, "/bin/sh", "-c", _SETUP, "stratus-step", str(root.resolve()), script]
    return run_step([*args, *bind_args], name=name, stdin=stdin, env=environment, timeout=timeout)


def run_isolated(
    args: Sequence[str], *, name: str, env: Mapping[str, str] | None = None
) -> StepResult:
    """Run a host command (debootstrap) in a private mount and PID namespace."""
    environment = {"PATH": PATH, "LANG": "C.UTF-8", **(env or {})}
    return run_step([*_UNSHARE, *args], name=name, env=environment)


def run_step(
    args: Sequence[str],
    *,
    name: str,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = STEP_TIMEOUT,
) -> StepResult:
    """Run one build step; its failure is an :class:`ImageError` carrying the step's output."""
    try:
        done = subprocess.run(
            list(args),
            input=stdin if stdin is not None else b"",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise DriverError(f"{args[0]} is not installed", hint="apt-get install util-linux") from exc
    except subprocess.TimeoutExpired as exc:
        output = (exc.output or b"").decode(errors="replace")
        raise step_failed(name, f"took more than {timeout:.0f} s", output) from exc
    output = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise step_failed(name, f"failed with status {done.returncode}", output)
    return StepResult(name=name, output=output)


def step_failed(name: str, what: str, output: str) -> ImageError:
    """The error of a failed step: its name, how it failed and the end of its output."""
    tail = "\n".join(output.rstrip().splitlines()[-OUTPUT_TAIL:])
    return ImageError(
        f"build step '{name}' {what}; its output ends with:\n{tail}",
        hint="fix the recipe step (or the host's network/mirror) and build again; "
        "no image was written",
        code="build_step_failed",
        details={"step": name, "output": tail},
    )
