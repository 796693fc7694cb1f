"""Host commands: ``stratus host list|show``."""

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
    "instances",
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


def rows(hosts: Iterable[Host]) -> list[tuple[str, ...]]:
    return [
        (
            h.name,
            h.state,
            h.hypervisor,
            f"{h.vcpus_allocated}/{h.vcpus}",
            f"{output.fmt_mib(h.memory_allocated_mib)}/{output.fmt_mib(h.memory_mib)}",
            str(h.instances),
            output.fmt_age(h.last_heartbeat),
        )
        for h in hosts
    ]
