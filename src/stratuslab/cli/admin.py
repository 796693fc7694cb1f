"""Administrator commands: ``stratus admin host token``."""

from __future__ import annotations

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app


@click.group("admin")
def admin() -> None:
    """Cloud administration."""


@admin.group("host")
def admin_host() -> None:
    """Add hosts to the cloud."""


@admin_host.command("token")
@click.option(
    "--ttl",
    type=click.FloatRange(min=1),
    default=3600,
    show_default=True,
    help="Seconds the token stays valid.",
)
@json_option
@pass_app
def token(app: AppContext, ttl: float) -> None:
    """Create a one-time token that lets a new host join the cloud."""
    created = app.client.create_join_token(ttl)
    if app.json:
        output.print_json(created)
        return
    click.echo(created.token)
    endpoint = app.client.endpoint
    output.info(app, f"valid until {output.fmt_time(created.expires_at)}; on the new host run:")
    output.info(app, f"  stratus-node --join {endpoint} {created.token}")
