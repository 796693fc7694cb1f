"""Flavor commands: ``stratus flavor list|create|delete``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.schemas.flavors import Flavor, FlavorCreate

HEADERS = ("name", "vcpus", "memory", "swap", "disk", "default", "builtin")


@click.group("flavor")
def flavor() -> None:
    """Instance types (vCPUs, memory, disk)."""


@flavor.command("list")
@json_option
@pass_app
def list_(app: AppContext) -> None:
    """List flavors."""
    flavors = app.client.list_flavors()
    output.emit(app, flavors, HEADERS, _rows(flavors))


@flavor.command("create")
@click.argument("name")
@click.option("--vcpus", type=click.IntRange(1), required=True)
@click.option("--memory", "memory_mib", type=click.IntRange(64), required=True, help="MiB")
@click.option("--swap", "swap_mib", type=click.IntRange(0), default=0, help="MiB")
@click.option("--disk", "disk_gib", type=click.IntRange(0), default=0, help="GiB")
@json_option
@pass_app
def create(
    app: AppContext, name: str, vcpus: int, memory_mib: int, swap_mib: int, disk_gib: int
) -> None:
    """Create a flavor (admin)."""
    spec = FlavorCreate(
        name=name, vcpus=vcpus, memory_mib=memory_mib, swap_mib=swap_mib, disk_gib=disk_gib
    )
    created = app.client.create_flavor(spec)
    output.emit(app, created, HEADERS, _rows([created]))


@flavor.command("delete")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@pass_app
@click.pass_context
def delete(ctx: click.Context, app: AppContext, names: Sequence[str]) -> None:
    """Delete flavors (admin; goes on after an error)."""
    failures = output.Failures()
    for name in names:
        with failures.item():
            app.client.delete_flavor(name)
            output.info(app, f"deleted: {name}")
    failures.exit(ctx)


def _rows(flavors: Iterable[Flavor]) -> list[tuple[str, ...]]:
    return [
        (
            f.name,
            str(f.vcpus),
            output.fmt_mib(f.memory_mib),
            output.fmt_mib(f.swap_mib) if f.swap_mib else "-",
            f"{f.disk_gib} GiB" if f.disk_gib else "-",
            "yes" if f.is_default else "",
            "yes" if f.builtin else "",
        )
        for f in flavors
    ]
