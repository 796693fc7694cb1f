"""The ``stratus`` root command, its global options, and the entry point."""

from __future__ import annotations

from typing import Any

import click

from stratuslab import __version__
from stratuslab.cli import (
    admin,
    allinone,
    appliances,
    auth,
    events,
    flavors,
    hosts,
    images,
    instances,
    networks,
    output,
    projects,
    quotas,
    usage,
    users,
)
from stratuslab.cli import marketplace as marketplace_cli
from stratuslab.cli import volumes as volumes_cli
from stratuslab.cli.context import AppContext


class StratusGroup(click.Group):
    """The root group: maps every error raised below it to a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        with output.exit_codes():
            return super().invoke(ctx)


@click.group(cls=StratusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", metavar="URL", help="Controller URL (env STRATUS_ENDPOINT).")
@click.option("--token", help="API token (env STRATUS_TOKEN).")
@click.option("--cloud", help="Cloud section of ~/.config/stratuslab/config.toml to use.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("-q", "--quiet", is_flag=True, help="Print only ids; no progress display.")
@click.version_option(__version__, prog_name="stratus")
@click.pass_context
def cli(
    ctx: click.Context,
    endpoint: str | None,
    token: str | None,
    cloud: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """StratusLab: run virtual machines on your cloud.

    Start a cloud on this machine with `stratus up`, add an image with
    `stratus image add FILE --name NAME`, then `stratus run NAME`.
    """
    app = ctx.ensure_object(AppContext)
    flags = {"endpoint": endpoint, "token": token, "cloud": cloud}
    app.overrides = {name: value for name, value in flags.items() if value}
    app.json = as_json
    app.quiet = quiet
    ctx.call_on_close(app.close)


for command in (*instances.COMMANDS, events.events, *allinone.COMMANDS):
    cli.add_command(command)
for group in (images.image, flavors.flavor, hosts.host, admin.admin, appliances.appliance):
    cli.add_command(group)
for command in (*auth.COMMANDS, *usage.COMMANDS):
    cli.add_command(command)
for group in (auth.token, projects.project, users.user, quotas.quota):
    cli.add_command(group)
for group in networks.GROUPS:
    cli.add_command(group)
cli.add_command(volumes_cli.volume)
marketplace_cli.register(images.image)  # build-metadata, sign, validate, upload, search, ...
for group in marketplace_cli.GROUPS:  # marketplace sync, imagelist import|export, policy check
    cli.add_command(group)


def main() -> None:
    cli(prog_name="stratus")
