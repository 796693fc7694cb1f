"""What the marketplace commands share: options, the endorser's key, the marketplace
client, and how entries and reports are shown.

Commands that talk to a marketplace use the controller's (``/api/v1/marketplace``) unless
``--marketplace URL`` (env ``STRATUS_MARKETPLACE``) names a standalone one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext
from stratuslab.client.marketplace import MarketplaceClient
from stratuslab.errors import InvalidInput
from stratuslab.marketplace.certs import SigningKey, load_pem, load_pkcs12
from stratuslab.marketplace.schemas import Entry

F = TypeVar("F", bound=Callable[..., Any])
HEADERS = ("entry", "identifier", "endorser", "os", "arch", "version", "status", "created")
DEFAULT_TRUST_DIR = Path("/etc/grid-security/certificates")


# -- options and credentials ---------------------------------------------------------------


def marketplace_option(func: F) -> F:
    return click.option(
        "--marketplace",
        "marketplace_url",
        envvar="STRATUS_MARKETPLACE",
        metavar="URL",
        help="A standalone marketplace (default: the controller's).",
    )(func)


def key_options(func: F) -> F:
    options = [
        click.option("--p12", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Endorser certificate and key (PKCS#12, e.g. usercred.p12)."),
        click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="PEM private key (with --cert)."),
        click.option("--cert", "cert_file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="PEM certificate (then its chain)."),
        click.option("--password", envvar="STRATUS_KEY_PASSWORD", default=None,
                     help="Password of the key (env STRATUS_KEY_PASSWORD)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def trust_option(func: F) -> F:
    return click.option(
        "--trust-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="STRATUS_TRUST_DIR",
        default=DEFAULT_TRUST_DIR,
        show_default=True,
        help="CA certificates and CRLs (env STRATUS_TRUST_DIR).",
    )(func)


def signing_key(
    p12: Path | None, key_file: Path | None, cert_file: Path | None, password: str | None
) -> SigningKey:
    secret = password.encode() if password is not None else None
    if p12 is not None and key_file is None and cert_file is None:
        return load_pkcs12(p12, secret)
    if p12 is None and key_file is not None and cert_file is not None:
        return load_pem(key_file, cert_file, secret)
    raise InvalidInput(
        "give the endorser's credentials: --p12 FILE, or --key FILE and --cert FILE",
        hint="grid certificates usually live in ~/.globus/usercred.p12",
    )


def client_of(app: AppContext, url: str | None) -> MarketplaceClient:
    if url:
        return MarketplaceClient(url, timeout=app.settings().timeout)
    return MarketplaceClient.of_controller(app.client)


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# -- output --------------------------------------------------------------------------------


def _rows(entries: Iterable[Entry]) -> list[tuple[str, ...]]:
    return [
        (
            output.short_id(e.id), e.identifier, e.endorser.key, output.text(e.os),
            output.text(e.os_arch), output.text(e.metadata.get("version")), e.status,
            output.fmt_time(e.created),
        )
        for e in entries
    ]  # fmt: skip


def emit_entries(app: AppContext, entries: list[Entry], data: Any) -> None:
    output.emit(app, data, HEADERS, _rows(entries), ids=[e.id for e in entries])


def emit_fields(app: AppContext, fields: dict[str, Any]) -> None:
    if app.json:
        output.print_json(fields)
    elif app.quiet:
        return
    else:
        output.print_fields(app, ((k, output.text(v)) for k, v in fields.items()))


def exit_on_failures(ctx: click.Context, app: AppContext, failures: list[str]) -> None:
    if not failures:
        return
    for failure in failures:
        click.echo(click.style("Error: ", fg="red", bold=True) + failure, err=True)
    ctx.exit(1)
