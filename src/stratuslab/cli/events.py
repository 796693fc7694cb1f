"""``stratus events [ID] [--follow]``: what happened, and why."""

from __future__ import annotations

import json
from collections import deque

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.schemas.events import Event

HEADERS = ("id", "time", "level", "kind", "instance", "message")
FOLLOW_SECONDS = 1.0


@click.command()
@click.argument("ref", metavar="[ID]", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "--tail",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many of the latest events to show first.",
)
@json_option
@pass_app
def events(app: AppContext, ref: str | None, follow: bool, tail: int) -> None:
    """Show the latest events, of one instance if ID is given."""
    instance_id = app.client.get_instance(ref).id if ref else None
    latest = list(deque(app.client.iter_events(instance_id), maxlen=tail))
    if not follow:
        output.emit(app, latest, HEADERS, [_row(e) for e in latest])
        return
    after = latest[-1].id if latest else 0
    try:
        while True:
            for event in latest:
                _print_line(app, event)
                after = event.id
            app.sleep(FOLLOW_SECONDS)
            latest = list(app.client.iter_events(instance_id, after=after))
    except KeyboardInterrupt:
        return


def _row(event: Event) -> tuple[str, ...]:
    return (
        str(event.id),
        output.fmt_time(event.time),
        event.level,
        event.kind,
        output.short_id(event.instance_id) or "-",
        event.message,
    )


def _print_line(app: AppContext, event: Event) -> None:
    """Followed events stream as lines (JSON lines with --json)."""
    if app.json:
        click.echo(json.dumps(event.model_dump(mode="json")))
    else:
        click.echo("  ".join(_row(event)))
