"""``stratus appliance derive``: a new image from a base image, scripts and packages.

The original `stratus-create-image`: boot the base with a throw-away key, run the installer
and the scripts over SSH, clean the image (host keys, root's keys, machine-id, temporary
files, cloud-init state), power it off and save its root disk as a new image. Everything goes
through the public API: it works against any StratusLab cloud.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stratuslab.cli.context import AppContext
from stratuslab.cli.instances import ssh_argv
from stratuslab.errors import DriverError, InvalidInput, StratusError
from stratuslab.schemas.images import Image
from stratuslab.schemas.instances import Instance, InstanceCreate

#: the original's --exclude defaults, plus what cloud images must not carry
CLEANUP = (
    "rm -rf /tmp/* /var/tmp/* /etc/ssh/ssh_host_* /etc/dropbear/dropbear_*_host_key "
    "/root/.ssh/authorized_keys /root/.ssh/known_hosts /var/lib/cloud/instances "
    "/var/lib/cloud/instance /var/log/*.log 2>/dev/null; "
    "[ -f /etc/machine-id ] && : > /etc/machine-id; sync; true"
)
INSTALLERS = (
    ("apt-get", "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && "
     "apt-get install -y -q {packages} && apt-get clean"),
    ("dnf", "dnf install -y {packages} && dnf clean all"),
    ("yum", "yum install -y {packages} && yum clean all"),
    ("apk", "apk add --no-cache {packages}"),
)  # fmt: skip

Step = Callable[[str], None]


def derive(
    app: AppContext,
    *,
    base: str,
    name: str,
    packages: Sequence[str],
    scripts: Sequence[Path],
    flavor: str | None,
    timeout: float,
    keep: bool,
    step: Step,
) -> Image:
    for script in scripts:
        if not script.is_file():
            raise InvalidInput(f"script {script} does not exist", hint="give readable files")
    with tempfile.TemporaryDirectory(prefix="stratus-derive-") as tmp:
        key = Path(tmp) / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)  # fmt: skip
        builder = f"derive-{secrets.token_hex(3)}"
        step(f"booting {base} as {builder}")
        created = app.client.create_instances(
            InstanceCreate(image=base, flavor=flavor, name=builder,
                           ssh_keys=[key.with_suffix(".pub").read_text()])
        )  # fmt: skip
        try:
            app.client.wait_operation(created.operation.id, timeout)
            inst = app.client.get_instance(builder)
            run = _runner(inst, key)
            _wait_ssh(run, timeout, step)
            if packages:
                step(f"installing {', '.join(packages)}")
                run(_install_command(run, packages), None)
            for script in scripts:
                step(f"running {script.name}")
                run("sh -s", script.read_bytes())
            step("cleaning the image (host keys, root's keys, machine-id, logs)")
            run(CLEANUP, None)
            step("powering off")
            op = app.client.instance_action(builder, "stop")
            app.client.wait_operation(op.id, timeout)
            step(f"saving the root disk as image {name}")
            op = app.client.save_instance(builder, name)
            app.client.wait_operation(op.id, timeout)
            return app.client.get_image(name)
        finally:
            if not keep:
                op = app.client.delete_instance(builder)
                app.client.wait_operation(op.id, timeout)


def _runner(inst: Instance, key: Path) -> Callable[[str, bytes | None], str]:
    def run(command: str, stdin: bytes | None) -> str:
        argv = ssh_argv(
            inst,
            user="root",
            identity=str(key),
            extra=["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", command],
        )
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=3600, check=False)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).decode(errors="replace")[-2000:]
            raise DriverError(
                f"`{command[:60]}` failed in the guest (exit {proc.returncode}):\n{tail}",
                hint="fix the script or packages; for packages the guest must reach a mirror "
                "(controller setting guest_egress = true)",
                code="derive_step_failed",
            )
        return proc.stdout.decode(errors="replace")

    return run


def _wait_ssh(run: Callable[[str, bytes | None], str], timeout: float, step: Step) -> None:
    step("waiting for SSH")
    deadline = time.monotonic() + timeout
    while True:
        try:
            run("true", None)
            return
        except StratusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _install_command(run: Callable[[str, bytes | None], str], packages: Sequence[str]) -> str:
    for tool, template in INSTALLERS:
        if run(f"command -v {tool} || true", None).strip():
            return template.format(packages=" ".join(packages))
    raise InvalidInput(
        "no known package manager in the base image (apt-get, dnf, yum, apk)",
        hint="install with --script instead",
    )
