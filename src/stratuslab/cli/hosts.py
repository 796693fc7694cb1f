"""Host commands: ``stratus host list|show|enable|disable|drain|remove|label|ratio``."""

from __future__ import annotations

from collections.abc import Iterable

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.schemas.hosts import Host

HEADERS = (
    "name",
    "state",
    "hypervisor",
    "vcpus",
    "memory",
    "disk",
    "load",
    "instances",
    "labels",
    "last heartbeat",
)


@click.group("host")
def host() -> None:
    """Hypervisor hosts of the cloud."""


@host.command("list")
@json_option
@pass_app
def list_(app: AppContext) -> None:
    """List hosts with their allocated and total capacity."""
    hosts = app.client.list_hosts()
    output.emit(app, hosts, HEADERS, rows(hosts), ids=[h.id for h in hosts])


@host.command("show")
@click.argument("ref", metavar="HOST")
@json_option
@pass_app
def show(app: AppContext, ref: str) -> None:
    """Show every field of a host."""
    found = app.client.get_host(ref)
    if app.json:
        output.print_json(found)
    else:
        output.print_fields(app, ((k, output.text(v)) for k, v in found.model_dump().items()))


def _ratio(value: float | None) -> str:
    return f" (x{value:g})" if value is not None and value != 1 else ""


def rows(hosts: Iterable[Host]) -> list[tuple[str, ...]]:
    return [
        (
            h.name,
            h.state + (f": {h.state_reason}" if h.state_reason else ""),
            h.hypervisor,
            f"{h.vcpus_allocated}/{h.vcpus}{_ratio(h.cpu_ratio)}",
            f"{output.fmt_mib(h.memory_allocated_mib)}/{output.fmt_mib(h.memory_mib)}"
            + _ratio(h.ram_ratio),
            f"{h.disk_allocated_gib}/{h.disk_gib} GiB{_ratio(h.disk_ratio)}",
            f"{float(h.usage.get('load1') or 0):.2f}",
            str(h.instances),
            ",".join(f"{k}={v}" for k, v in sorted(h.labels.items())) or "-",
            output.fmt_age(h.last_heartbeat),
        )
        for h in hosts
    ]


def _state_command(action: str, doc: str) -> click.Command:
    @click.command(action, help=doc)
    @click.argument("ref", metavar="HOST")
    @click.option("--reason", default="", help="Why (shown in `stratus host list`).")
    @json_option
    @pass_app
    def command(app: AppContext, ref: str, reason: str) -> None:
        found = app.client.host_state(ref, action, reason)
        if app.json:
            output.print_json(found)
        else:
            output.info(app, f"host {found.name} is {found.state}")

    return command


for _action, _doc in (
    ("enable", "Let the scheduler place instances on HOST again."),
    ("disable", "No new instances on HOST; those it runs stay."),
    ("drain", "No new instances on HOST, and move the ones it runs to other hosts."),
):
    host.add_command(_state_command(_action, _doc))


@host.command("remove")
@click.argument("ref", metavar="HOST")
@pass_app
def remove(app: AppContext, ref: str) -> None:
    """Forget an empty HOST (drain it first); its agent's credential stops working."""
    app.client.remove_host(ref)
    output.info(app, f"host {ref} removed")


@host.command("label")
@click.argument("ref", metavar="HOST")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=VALUE|KEY-")
@json_option
@pass_app
def label(app: AppContext, ref: str, labels: tuple[str, ...]) -> None:
    """Set labels (KEY=VALUE) or remove them (KEY-) for requirement expressions."""
    changes: dict[str, str | None] = {}
    for item in labels:
        if item.endswith("-") and "=" not in item:
            changes[item[:-1]] = None
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE, or KEY- to remove")
        changes[key] = value
    found = app.client.update_host(ref, {"labels": changes})
    if app.json:
        output.print_json(found)
    else:
        output.info(
            app,
            f"host {found.name}: "
            + (", ".join(f"{k}={v}" for k, v in sorted(found.labels.items())) or "no labels"),
        )


@host.command("ratio")
@click.argument("ref", metavar="HOST")
@click.option("--cpu", type=float, help="vCPU overcommit ratio (capacity = vCPUs x ratio).")
@click.option("--ram", type=float, help="RAM overcommit ratio.")
@click.option("--disk", type=float, help="Disk overcommit ratio.")
@click.option("--reset", is_flag=True, help="Back to the cloud's default ratios.")
@json_option
@pass_app
def ratio(
    app: AppContext,
    ref: str,
    cpu: float | None,
    ram: float | None,
    disk: float | None,
    reset: bool,
) -> None:
    """Set the overcommit ratios of HOST."""
    changes: dict[str, object] = {
        k: v for k, v in (("cpu_ratio", cpu), ("ram_ratio", ram), ("disk_ratio", disk)) if v
    }
    if reset:
        changes["reset_ratios"] = ["cpu_ratio", "ram_ratio", "disk_ratio"]
    if not changes:
        raise click.UsageError("give --cpu, --ram, --disk or --reset")
    found = app.client.update_host(ref, changes)
    if app.json:
        output.print_json(found)
    else:
        output.info(
            app,
            f"host {found.name}: cpu x{found.cpu_ratio or 'default'}, "
            f"ram x{found.ram_ratio or 'default'}, disk x{found.disk_ratio or 'default'}",
        )
