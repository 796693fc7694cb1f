"""Marketplace commands.

* ``stratus image build-metadata|sign|validate|upload|search|show-entry|deprecate|tag``:
  added to the ``image`` group by :func:`register` (:mod:`.marketplace_entries`);
* ``stratus marketplace sync`` (here), ``stratus imagelist import|export``
  (:mod:`.imagelists`), ``stratus policy check`` (:mod:`.site_policy`): the groups in
  :data:`GROUPS`.

Commands that talk to a marketplace use the controller's (``/api/v1/marketplace``) unless
``--marketplace URL`` (env ``STRATUS_MARKETPLACE``) names a standalone one.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.imagelists import imagelist_group
from stratuslab.cli.marketplace_common import (
    client_of,
    emit_fields,
    exit_on_failures,
    marketplace_option,
)
from stratuslab.cli.marketplace_entries import COMMANDS
from stratuslab.cli.site_policy import policy
from stratuslab.client.marketplace import MarketplaceClient
from stratuslab.marketplace.replication import RemoteSink, replicate


def register(image_group: click.Group) -> None:
    """Add the marketplace commands to the ``stratus image`` group."""
    for command in COMMANDS:
        image_group.add_command(command)


# -- stratus marketplace -------------------------------------------------------------------


@click.group("marketplace")
def marketplace() -> None:
    """The appliance marketplace: replication."""


@marketplace.command("sync")
@click.option(
    "--from",
    "source_url",
    required=True,
    metavar="URL",
    help="Marketplace to pull from (e.g. https://central:8771).",
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="Only entries stored at the source since then.",
)
@marketplace_option
@json_option
@pass_app
@click.pass_context
def sync_cmd(
    ctx: click.Context, app: AppContext, source_url: str, since: datetime | None,
    marketplace_url: str | None,
) -> None:  # fmt: skip
    """Copy every entry of another marketplace into this one; each is verified on the way in.

    Run again at will: entries already held are skipped.
    """
    when = since.replace(tzinfo=since.tzinfo or UTC) if since is not None else None
    with MarketplaceClient(source_url) as source, client_of(app, marketplace_url) as target:
        report = replicate(source, RemoteSink(target), since=when)
    last = report.last_uploaded.isoformat() if report.last_uploaded else None
    summary = {
        "fetched": report.fetched, "stored": report.stored, "held": report.held,
        "skipped": report.skipped, "failed": len(report.failed), "next_since": last,
    }  # fmt: skip
    emit_fields(app, {**summary, "failures": [list(f) for f in report.failed]})
    exit_on_failures(ctx, app, [f"entry {i}: {why}" for i, why in report.failed])


GROUPS: tuple[click.Group, ...] = (marketplace, imagelist_group, policy)

__all__ = ["GROUPS", "register"]
