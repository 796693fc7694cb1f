"""Accounting and audit: ``stratus usage`` and ``stratus audit``."""

from __future__ import annotations

from datetime import datetime

import click

from stratuslab.cli import output
from stratuslab.cli.auth import identity
from stratuslab.cli.context import AppContext, pass_app

HEADERS = ("instance", "name", "project", "host", "vcpus", "hours", "vcpu-h", "ram gb-h", "status")


@click.command()
@click.option("--project", help="Project name or id (default: all yours).")
@click.option("--from", "start", type=click.DateTime(), help="Start (default: this month).")
@click.option("--to", "end", type=click.DateTime(), help="End (default: now).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "apel"]),
    default="table",
    show_default=True,
    help="apel: an EGI cloud accounting message (cloud admin).",
)
@pass_app
def usage(
    app: AppContext, project: str | None, start: datetime | None, end: datetime | None, fmt: str
) -> None:
    """Usage per instance: wall time, vCPU-hours, RAM GB-hours, host."""
    start, end = _local(start), _local(end)
    if fmt in ("csv", "apel"):
        click.echo(identity(app).usage_text(fmt, project=project, start=start, end=end), nl=False)
        return
    records = identity(app).usage(project=project, start=start, end=end)
    if fmt == "json" or app.json:
        output.print_json(records)
        return
    rows = [
        (
            output.short_id(r.instance_id),
            r.name,
            output.short_id(r.project_id),
            r.host or "-",
            str(r.vcpus),
            f"{r.wall_seconds / 3600:.2f}",
            f"{r.vcpu_hours:.2f}",
            f"{r.ram_gb_hours:.2f}",
            r.status,
        )
        for r in records
    ]
    output.print_table(app, HEADERS, rows)


@click.command()
@click.option("--user", help="Only this user's calls.")
@click.option("--after", type=int, default=0, help="Records after this id.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@pass_app
def audit(app: AppContext, user: str | None, after: int, limit: int) -> None:
    """The audit log of mutating API calls (cloud admin)."""
    records = identity(app).audit(user=user, after=after, limit=limit)
    rows = [
        (
            str(r.id),
            output.fmt_time(r.time),
            r.actor or "-",
            r.source,
            f"{r.method} {r.path}",
            str(r.status),
        )
        for r in records
    ]
    output.emit(app, records, ("id", "time", "who", "from", "call", "status"), rows)


def _local(when: datetime | None) -> datetime | None:
    """Dates typed on the command line are local time."""
    return when.astimezone() if when is not None else None


COMMANDS = (usage, audit)
