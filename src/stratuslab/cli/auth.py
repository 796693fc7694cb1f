"""Logging in and API tokens: ``stratus login|logout|whoami`` and ``stratus token ...``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.client.identity import Identity
from stratuslab.config import read_toml, save_cloud, user_config_path
from stratuslab.schemas.identity import Token

HEADERS = ("id", "project", "scopes", "description", "created", "expires", "revoked")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | None) -> float | None:
    """``90``, ``30m``, ``12h``, ``30d`` as seconds."""
    if value is None:
        return None
    unit = value[-1:].lower()
    number = value[:-1] if unit in DURATION_UNITS else value
    try:
        seconds = float(number) * DURATION_UNITS.get(unit, 1)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a duration (e.g. 90, 30m, 12h, 30d)") from None
    if seconds <= 0:
        raise click.BadParameter("a duration must be positive")
    return seconds


def config_path() -> Path:
    return Path(os.environ.get("STRATUS_CONFIG") or str(user_config_path()))


def identity(app: AppContext) -> Identity:
    return Identity(app.client)


@click.command()
@click.option("--username", "-u", help="User name (asked if not given).")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (scripts)."
)
@click.option("--project", help="Project to act in (default: your default project).")
@click.option("--scope", "scopes", multiple=True, help="Limit the token (repeat): compute:read...")
@click.option("--expires-in", help="Token lifetime, e.g. 12h or 30d (default: the cloud's).")
@click.option("--save-as", "cloud_name", help="Cloud section to save it in (default: current).")
@pass_app
def login(
    app: AppContext,
    username: str | None,
    password_stdin: bool,
    project: str | None,
    scopes: Sequence[str],
    expires_in: str | None,
    cloud_name: str | None,
) -> None:
    """Log in with your user name and password; stores a token in your config file."""
    settings = app.settings()
    name = username or click.prompt("User name")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True)
    with app.client_for(settings.endpoint, "") as anonymous:
        created = Identity(anonymous).login(
            name,
            password,
            project=project,
            scopes=list(scopes) or None,
            expires_in=parse_duration(expires_in),
        )
    cloud = cloud_name or settings.cloud or "default"
    save_cloud(config_path(), cloud, {"endpoint": settings.endpoint, "token": created.token})
    until = output.fmt_time(created.expires_at) if created.expires_at else "it is revoked"
    output.info(
        app,
        f"logged in as {created.user} in project {created.project}; the token is saved "
        f"in {config_path()} [clouds.{cloud}] and works until {until}",
    )


@click.command()
@pass_app
def logout(app: AppContext) -> None:
    """Revoke the token in use and remove it from your config file."""
    settings = app.settings()
    me = identity(app).whoami()
    token_id = me.credential.removeprefix("token:")
    if me.credential.startswith("token:") and not token_id.startswith("legacy-"):
        identity(app).revoke_token(token_id)
    cloud = settings.cloud or "default"
    path = config_path()
    section = dict(read_toml(path).get("clouds", {}).get(cloud, {}))
    if section.get("token"):
        section.pop("token")
        save_cloud(path, cloud, section)
    output.info(app, f"logged out of {settings.endpoint}")


@click.command()
@json_option
@pass_app
def whoami(app: AppContext) -> None:
    """Who the current credentials say you are: user, project, roles, scopes."""
    me = identity(app).whoami()
    if app.json:
        output.print_json(me)
        return
    roles = ", ".join(f"{p}: {r}" for p, r in sorted(me.roles.items())) or "-"
    scopes = " ".join(me.scopes) if me.scopes is not None else "all your roles allow"
    output.print_fields(
        app,
        [
            ("user", me.user),
            ("project", me.project or "-"),
            ("roles", roles),
            (
                "cloud admin",
                "yes" if me.admin else ("yes (not with this token)" if me.cloud_admin else "no"),
            ),
            ("scopes", scopes),
            ("method", me.method),
            ("credential", me.credential),
        ],
    )


@click.group("token")
def token() -> None:
    """API tokens: scoped, expiring, revocable."""


@token.command("create")
@click.option("--project", help="Project the token acts in (default: the current one).")
@click.option("--scope", "scopes", multiple=True, help="Limit the token (repeat).")
@click.option("--expires-in", help="Lifetime, e.g. 12h or 30d.")
@click.option("--description", default="", help="What the token is for.")
@json_option
@pass_app
def create(
    app: AppContext,
    project: str | None,
    scopes: Sequence[str],
    expires_in: str | None,
    description: str,
) -> None:
    """Create a token (printed once: keep it safe)."""
    created = identity(app).create_token(
        project=project,
        scopes=list(scopes) or None,
        expires_in=parse_duration(expires_in),
        description=description,
    )
    if app.json:
        output.print_json(created)
        return
    click.echo(created.token)
    output.info(app, f"token {created.token_id} for project {created.project}: shown only once")


@token.command("list")
@click.option("--user", help="Another user's tokens (cloud admin).")
@click.option("--all", "revoked", is_flag=True, help="Include revoked tokens.")
@json_option
@pass_app
def list_(app: AppContext, user: str | None, revoked: bool) -> None:
    """List your tokens (never their secrets)."""
    tokens = identity(app).list_tokens(user=user, revoked=revoked)
    output.emit(app, tokens, HEADERS, _rows(tokens), ids=[t.token_id for t in tokens])


@token.command("revoke")
@click.argument("token_ids", metavar="ID...", nargs=-1, required=True)
@pass_app
@click.pass_context
def revoke(ctx: click.Context, app: AppContext, token_ids: Sequence[str]) -> None:
    """Revoke tokens (goes on after an error)."""
    failures = output.Failures()
    for token_id in token_ids:
        with failures.item():
            identity(app).revoke_token(token_id)
            output.info(app, f"revoked: {token_id}")
    failures.exit(ctx)


def _rows(tokens: Sequence[Token]) -> list[tuple[str, ...]]:
    return [
        (
            t.token_id,
            t.project,
            " ".join(t.scopes) if t.scopes is not None else "(all)",
            t.description,
            output.fmt_time(t.created_at),
            output.fmt_time(t.expires_at) if t.expires_at else "never",
            output.fmt_time(t.revoked_at) if t.revoked_at else "",
        )
        for t in tokens
    ]


COMMANDS = (login, logout, whoami)
