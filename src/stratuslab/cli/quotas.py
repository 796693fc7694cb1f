"""Quotas: ``stratus quota show|set``."""

from __future__ import annotations

from collections.abc import Sequence

import click

from stratuslab.cli import output
from stratuslab.cli.auth import identity
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.schemas.identity import Quota, QuotaSet


@click.group("quota")
def quota() -> None:
    """Limits of projects and users, and what they use."""


@quota.command("show")
@click.argument("ref", metavar="PROJECT", required=False)
@click.option("--user", "user_ref", help="Show a user's own limits instead (`me` for yours).")
@json_option
@pass_app
def show(app: AppContext, ref: str | None, user_ref: str | None) -> None:
    """Show a project's quota (default: the current project)."""
    ident = identity(app)
    if user_ref is not None:
        found = ident.quota("user", user_ref)
    else:
        found = ident.quota("project", ref or ident.whoami().project_id)
    _emit(app, found)


@quota.command("set")
@click.argument("ref", metavar="PROJECT")
@click.argument("limits", metavar="NAME=N...", nargs=-1, required=True)
@click.option("--user", "is_user", is_flag=True, help="PROJECT names a user instead.")
@json_option
@pass_app
def set_(app: AppContext, ref: str, limits: Sequence[str], is_user: bool) -> None:
    """Set limits (cloud admin), e.g. `stratus quota set physics vcpus=40 instances=-1`
    (-1: no limit). Names: instances vcpus ram_mib volumes volume_gib public_addresses
    images."""
    changes: dict[str, int] = {}
    for item in limits:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: write NAME=NUMBER", param_hint="limits")
        try:
            changes[name.strip()] = int(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: {value!r} is not a number") from None
    spec = QuotaSet.model_validate(changes)
    _emit(app, identity(app).set_quota("user" if is_user else "project", ref, spec))


def _emit(app: AppContext, found: Quota) -> None:
    if app.json:
        output.print_json(found)
        return
    rows = [
        (name, str(found.usage.get(name, 0)), "-" if limit is None else str(limit))
        for name, limit in found.limits.items()
    ]
    output.info(app, f"{found.scope} {found.name}")
    output.print_table(app, ("resource", "in use", "limit"), rows)
