"""Instance commands: run, list, show, start, stop, reboot, kill, console, ssh."""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.networks import FORWARD_HEADERS, NIC_HEADERS, forward_rows, nic_rows
from stratuslab.cli.progress import wait
from stratuslab.context.spec import parse_pair
from stratuslab.context.userdata import build_user_data, check_user_data_size, load_part
from stratuslab.errors import Conflict, InvalidInput, StratusError
from stratuslab.schemas.instances import Instance, InstanceCreate
from stratuslab.schemas.operations import Operation

DEFAULT_KEYS = ("id_ed25519.pub", "id_rsa.pub")
DEFAULT_TIMEOUT = 600.0
LIST_HEADERS = ("id", "name", "status", "flavor", "vcpus", "memory", "address", "host")
RUN_HEADERS = ("id", "name", "state", "address", "host")
SHOW_EVENTS = 5

no_wait_option = click.option(
    "--no-wait", is_flag=True, help="Return once the request is accepted."
)
timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the operation.",
)
refs_argument = click.argument("refs", metavar="ID...", nargs=-1, required=True)


def encode_user_data(args: tuple[str, ...]) -> str | None:
    """Build the user data from FILE[:TYPE] arguments (MIME multipart for several), base64."""
    if not args:
        return None
    payload = build_user_data([load_part(arg) for arg in args])
    check_user_data_size(payload)
    return base64.b64encode(payload).decode()


@click.command()
@click.argument("image")
@click.option("-t", "--type", "flavor", help="Flavor (instance type); the default if absent.")
@click.option(
    "-k",
    "--key",
    "keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public SSH key file (repeatable). Default: ~/.ssh/id_ed25519.pub or id_rsa.pub.",
)
@click.option(
    "--user-data",
    "user_data",
    multiple=True,
    metavar="FILE[:TYPE]",
    help="User data file, repeatable: several are sent as MIME multipart. TYPE is "
    "cloud-config, x-shellscript, cloud-boothook, ... (guessed from the first line).",
)
@click.option(
    "--context",
    "context_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Free context pair passed to the guest (repeatable).",
)
@click.option(
    "--context-method",
    type=click.Choice(["nocloud", "configdrive", "opennebula"]),
    help="How the guest reads its context (default: the site's).",
)
@click.option(
    "--network",
    "networks",
    multiple=True,
    metavar="NAME[:ip=ADDR]",
    help="A NIC on a virtual network (repeatable, in guest order); ip= asks for a fixed address.",
)
@click.option("--secgroup", help="Security group of the NICs (default: the project's default).")
@click.option("--name", help="Instance name.")
@click.option(
    "--volume", "volumes", multiple=True, metavar="VOLUME", help="Attach a volume (repeatable)."
)
@click.option(
    "--volatile-disk", "volatile_disks", multiple=True, type=click.IntRange(min=1),
    metavar="GB", help="Add a volatile disk of GB GiB, deleted with the instance (repeatable).",
)  # fmt: skip
@click.option("--boot-volume", metavar="VOLUME", help="Boot from this bootable volume.")
@click.option(
    "--vm-requirements", "--requirements", "requirements", metavar="EXPR",
    help='Host requirement expression, e.g. \'ARCH = "x86_64" & LABEL:gpu = "yes"\'.',
)  # fmt: skip
@click.option("--affinity-group", metavar="GROUP", help="Run on a host with other members.")
@click.option("--anti-affinity-group", metavar="GROUP", help="Never on a host with another member.")
@click.option(
    "--ha", "ha_policy", type=click.Choice(["none", "restart", "migrate"]),
    help="When its host fails: none, restart elsewhere from the image, or migrate (needs "
    "--boot-volume on shared storage). Default: the site's.",
)  # fmt: skip
@click.option("-n", "--count", type=click.IntRange(1, 100), default=1, show_default=True)
@no_wait_option
@timeout_option
@json_option
@pass_app
def run(
    app: AppContext,
    image: str,
    flavor: str | None,
    keys: tuple[Path, ...],
    user_data: tuple[str, ...],
    context_pairs: tuple[str, ...],
    context_method: str | None,
    networks: tuple[str, ...],
    secgroup: str | None,
    name: str | None,
    volumes: tuple[str, ...],
    volatile_disks: tuple[int, ...],
    boot_volume: str | None,
    requirements: str | None,
    affinity_group: str | None,
    anti_affinity_group: str | None,
    ha_policy: Literal["none", "restart", "migrate"] | None,
    count: int,
    no_wait: bool,
    timeout: float,
) -> None:
    """Start COUNT instances of IMAGE (id or name) and wait until they run."""
    spec = InstanceCreate(
        image=image,
        flavor=flavor,
        name=name,
        count=count,
        ssh_keys=read_keys(keys or default_keys()),
        user_data=encode_user_data(user_data),
        context=dict(parse_pair(p) for p in context_pairs),
        context_method=context_method,
        networks=list(networks),
        security_group=secgroup,
        volumes=list(volumes),
        volatile_disks=list(volatile_disks),
        boot_volume=boot_volume,
        requirements=requirements,
        affinity_group=affinity_group,
        anti_affinity_group=anti_affinity_group,
        ha_policy=ha_policy,
    )
    if not spec.ssh_keys:
        output.info(app, "note: no SSH key given and none found in ~/.ssh; pass --key FILE")
    created = app.client.create_instances(spec)
    instances = created.instances
    failure: StratusError | None = None
    if not no_wait:
        label = f"starting {len(instances)} instance{'s' if len(instances) != 1 else ''}"
        try:
            wait(app, created.operation, timeout=timeout, label=label)
        except StratusError as err:
            failure = err
        instances = [_refresh(app, instance) for instance in instances]
    rows = [
        (output.short_id(i.id), i.name, i.status, output.text(i.address), _host(i))
        for i in instances
    ]
    output.emit(app, instances, RUN_HEADERS, rows, ids=[i.id for i in instances])
    if failure is not None:
        raise failure


@click.command("list")
@click.option("--status", help="Only instances in this status (e.g. running).")
@json_option
@pass_app
def list_(app: AppContext, status: str | None) -> None:
    """List your instances."""
    instances = list(app.client.iter_instances(status=status))
    output.emit(app, instances, LIST_HEADERS, _list_rows(instances), ids=[i.id for i in instances])


@click.command()
@click.argument("ref", metavar="ID")
@json_option
@pass_app
def show(app: AppContext, ref: str) -> None:
    """Show every field of an instance and its last events."""
    instance = app.client.get_instance(ref)
    events = list(deque(app.client.iter_events(instance.id), maxlen=SHOW_EVENTS))
    if app.json:
        output.print_json({**instance.model_dump(mode="json"), "events": output.jsonable(events)})
        return
    fields = instance.model_dump(exclude={"nics", "port_forwards"})
    output.print_fields(app, ((k, output.text(v)) for k, v in fields.items()))
    network_tables(app, instance)
    if events:
        app.out.print("\n[bold]Last events[/bold]")
        rows = [(output.fmt_time(e.time), e.level, e.kind, e.message) for e in events]
        output.print_table(app, ("time", "level", "kind", "message"), rows)


@click.command()
@refs_argument
@no_wait_option
@timeout_option
@json_option
@pass_app
@click.pass_context
def start(
    ctx: click.Context, app: AppContext, refs: Sequence[str], no_wait: bool, timeout: float
) -> None:
    """Start stopped instances."""
    act = partial(app.client.instance_action, action="start")
    _for_each(ctx, app, refs, act, ("started", "starting"), no_wait=no_wait, timeout=timeout)


@click.command()
@refs_argument
@no_wait_option
@timeout_option
@json_option
@pass_app
@click.pass_context
def stop(
    ctx: click.Context, app: AppContext, refs: Sequence[str], no_wait: bool, timeout: float
) -> None:
    """Shut instances down (ACPI, then forced after the controller's stop timeout)."""
    act = partial(app.client.instance_action, action="stop")
    _for_each(ctx, app, refs, act, ("stopped", "stopping"), no_wait=no_wait, timeout=timeout)


@click.command()
@refs_argument
@click.option("--hard", is_flag=True, help="Reset instead of an ACPI reboot.")
@no_wait_option
@timeout_option
@json_option
@pass_app
@click.pass_context
def reboot(
    ctx: click.Context,
    app: AppContext,
    refs: Sequence[str],
    hard: bool,
    no_wait: bool,
    timeout: float,
) -> None:
    """Reboot instances."""
    act = partial(app.client.instance_action, action="reboot", hard=hard)
    words = ("rebooted", "rebooting")
    _for_each(ctx, app, refs, act, words, no_wait=no_wait, timeout=timeout)


@click.command()
@refs_argument
@no_wait_option
@timeout_option
@json_option
@pass_app
@click.pass_context
def kill(
    ctx: click.Context, app: AppContext, refs: Sequence[str], no_wait: bool, timeout: float
) -> None:
    """Destroy instances and release their resources (goes on after an error)."""
    act = app.client.delete_instance
    _for_each(ctx, app, refs, act, ("deleted", "deleting"), no_wait=no_wait, timeout=timeout)


@click.command()
@click.argument("ref", metavar="ID")
@click.option("--host", help="Target host (default: the scheduler's choice).")
@click.option("--live", is_flag=True, help="Keep it running while it moves (libvirt to libvirt).")
@no_wait_option
@timeout_option
@json_option
@pass_app
def migrate(
    app: AppContext, ref: str, host: str | None, live: bool, no_wait: bool, timeout: float
) -> None:
    """Move an instance to another host (admin). Cold: stop it, move its root disk, start it
    there. --live: the guest keeps running."""
    op = app.client.migrate_instance(ref, host, live=live)
    if not no_wait:
        wait(app, op, timeout=timeout, label=f"migrating {ref}")
    inst = app.client.get_instance(ref)
    rows = [
        (output.short_id(inst.id), inst.name, inst.status, output.text(inst.address), _host(inst))
    ]
    output.emit(app, [inst], RUN_HEADERS, rows, ids=[inst.id])


@click.command()
@click.argument("ref", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until Ctrl-C.")
@pass_app
def console(app: AppContext, ref: str, follow: bool) -> None:
    """Print the serial console output of an instance."""
    offset = 0
    try:
        while True:
            chunk = app.client.console(ref, offset)
            if chunk.data:
                click.echo(chunk.data, nl=False)
            offset = chunk.next_offset
            if not follow:
                return
            app.sleep(0.5)
    except KeyboardInterrupt:
        return


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("ref", metavar="ID")
@click.option(
    "-i",
    "identity",
    type=click.Path(exists=True, dir_okay=False),
    help="Private key file for ssh.",
)
@click.option("-l", "--user", default="root", show_default=True)
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def ssh(
    app: AppContext, ref: str, identity: str | None, user: str, ssh_args: tuple[str, ...]
) -> None:
    """Open an SSH session to an instance (arguments after -- go to ssh)."""
    instance = app.client.get_instance(ref)
    app.exec_fn("ssh", ssh_argv(instance, user=user, identity=identity, extra=ssh_args))


COMMANDS = (run, list_, show, start, stop, reboot, kill, console, ssh, migrate)


# -- helpers -------------------------------------------------------------------------------


def default_keys() -> list[Path]:
    for name in DEFAULT_KEYS:
        path = Path.home() / ".ssh" / name
        if path.is_file():
            return [path]
    return []


def read_keys(paths: Iterable[Path]) -> list[str]:
    """Every key line of every file (a file may hold several keys)."""
    keys = []
    for path in paths:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                if line.startswith("-----BEGIN"):
                    raise InvalidInput(
                        f"{path} is a private key", hint="pass the public key file (*.pub)"
                    )
                keys.append(line)
    return keys


def ssh_argv(
    instance: Instance, *, user: str, identity: str | None, extra: Sequence[str]
) -> list[str]:
    if not instance.address:
        raise Conflict(
            f"instance {instance.name} has no SSH address yet (status {instance.status})",
            hint=f"wait until it runs: `stratus show {instance.name}`",
        )
    host, _, port = instance.address.rpartition(":")
    argv = ["ssh", "-p", port, "-o", "StrictHostKeyChecking=no"]
    argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    if identity is not None:
        argv += ["-i", identity]
    return [*argv, f"{user}@{host.strip('[]')}", *extra]


def _for_each(
    ctx: click.Context,
    app: AppContext,
    refs: Sequence[str],
    act: Callable[[str], Operation],
    words: tuple[str, str],
    *,
    no_wait: bool,
    timeout: float,
) -> None:
    """Apply ``act`` to every ref, going on after errors; exit non-zero if any failed."""
    failures = output.Failures()
    done: list[Operation] = []
    for ref in refs:
        with failures.item():
            operation = act(ref)
            if not no_wait:
                operation = wait(app, operation, timeout=timeout, label=f"{words[1]} {ref}")
            done.append(operation)
            if not (app.json or app.quiet):
                click.echo(f"{words[1] if no_wait else words[0]}: {ref}")
    if app.json:
        output.print_json(done)
    failures.exit(ctx)


def _refresh(app: AppContext, instance: Instance) -> Instance:
    try:
        return app.client.get_instance(instance.id)
    except StratusError:
        return instance


def _host(instance: Instance) -> str:
    return instance.host_name or output.short_id(instance.host_id) or "-"


def network_tables(app: AppContext, instance: Instance) -> None:
    """The NICs and port forwards of ``stratus show``."""
    if instance.nics:
        app.out.print("\n[bold]NICs[/bold]")
        output.print_table(app, NIC_HEADERS, nic_rows(instance.nics))
    if instance.port_forwards:
        app.out.print("\n[bold]Port forwards[/bold]")
        output.print_table(app, FORWARD_HEADERS, forward_rows(instance.port_forwards))


def _list_rows(instances: Iterable[Instance]) -> list[tuple[str, ...]]:
    return [
        (
            output.short_id(i.id),
            i.name,
            i.status,
            i.flavor_name,
            str(i.vcpus),
            output.fmt_mib(i.memory_mib),
            output.text(i.address),
            _host(i),
        )
        for i in instances
    ]
