"""``stratus policy check``: would the site image policy let instances run an image?"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path

import click

from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.marketplace_common import client_of, emit_fields, marketplace_option
from stratuslab.errors import InvalidInput, NotFound
from stratuslab.marketplace.policy import EntryStatus, PolicyEntry, SitePolicy, check_any
from stratuslab.marketplace.schemas import Entry


@click.group("policy")
def policy() -> None:
    """Site image policy (administrators)."""


def load_policy(path: Path | None) -> SitePolicy:
    if path is None:
        return SitePolicy()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"cannot read the policy {path}: {exc}", hint="check the file") from exc
    table = data.get("policy", data)
    return SitePolicy.from_mapping(table if isinstance(table, dict) else {})


def policy_entries(entries: Iterable[Entry]) -> list[PolicyEntry]:
    """The newest entry of each endorser (``entries`` newest first), as the policy sees it."""
    newest: dict[str, Entry] = {}
    for entry in entries:
        newest.setdefault(entry.endorser.key, entry)
    return [
        PolicyEntry(
            identifier=e.identifier,
            endorser_email=e.endorser.email,
            endorser_dn=e.endorser.subject,
            checksums=frozenset(str(v) for v in (e.metadata.get("checksums") or {}).values() if v),
            status=EntryStatus(e.status),
            deprecated_reason=e.deprecated,
            valid_until=e.valid_until.strftime("%Y-%m-%dT%H:%M:%SZ") if e.valid_until else None,
        )
        for e in newest.values()
    ]


@policy.command("check")
@click.argument("identifier")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="TOML file with a [policy] table (default: accept what "
              "has a valid trusted entry).")  # fmt: skip
@marketplace_option
@json_option
@pass_app
def check_cmd(
    app: AppContext, identifier: str, policy_file: Path | None, marketplace_url: str | None
) -> None:
    """Would the site policy let instances run image IDENTIFIER? Exit 5 with the rule if not."""
    site = load_policy(policy_file)
    with client_of(app, marketplace_url) as client:
        try:
            entries = policy_entries(client.image_entries(identifier))
        except NotFound:
            entries = []
    accepted = check_any(entries, identifier, site)
    by = accepted.endorser_email or accepted.endorser_dn if accepted else "(no entry needed)"
    emit_fields(app, {"image": identifier, "accepted": True, "endorser": by})
