"""``stratus-controller``: initialise the database and serve the API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from stratuslab.config import ControllerSettings, load_controller_settings
from stratuslab.errors import StratusError
from stratuslab.types import Role


def _settings(data_dir: Path | None, database_url: str | None, **extra: Any) -> ControllerSettings:
    overrides: dict[str, Any] = {"data_dir": data_dir, "database_url": database_url, **extra}
    return load_controller_settings(overrides={k: v for k, v in overrides.items() if v is not None})


@click.group()
def cli() -> None:
    """The StratusLab controller."""


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--database-url")
def init(data_dir: Path | None, database_url: str | None) -> None:
    """Migrate the database, create the admin user, project and flavors.

    Prints one JSON line with a new admin API token and a new host join token; the admin
    token is also written to DATA_DIR/admin.token (mode 0600). The admin user ("admin", a
    cloud administrator, admin of project "admin") has no password: set one with
    `stratus user set-password admin` to use `stratus login`.
    """
    from stratuslab.api.app import build_ctx
    from stratuslab.services import auth, flavors, hosts

    settings = _settings(data_dir, database_url)
    ctx = build_ctx(settings)
    with ctx.uow() as s:
        user, project = auth.ensure_admin(s)
        flavors.ensure_builtin(s, user.id, project.id)
        token = auth.issue_token(s, user, project, "all-in-one admin")
        principal = auth.Principal(
            user_id=user.id,
            project_id=project.id,
            roles={project.id: Role.ADMIN},
            cloud_admin=True,
        )
        join_token, _ = hosts.create_join_token(s, principal, 3600)
    path = settings.data_dir / "admin.token"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(token + "\n")
    click.echo(json.dumps({"admin_token": token, "join_token": join_token}))


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--database-url")
@click.option("--host", default=None, help="address to listen on (default 127.0.0.1)")
@click.option("--port", type=int, default=None)
def serve(
    data_dir: Path | None, database_url: str | None, host: str | None, port: int | None
) -> None:
    """Serve the REST API (and run the scheduler and housekeeping loops)."""
    import uvicorn

    from stratuslab.api.app import create_app

    settings = _settings(data_dir, database_url, host=host, port=port)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        # agents pause between requests longer than uvicorn's 5 s default: keep them connected
        timeout_keep_alive=75,
        backlog=4096,
    )


def main() -> None:
    try:
        cli(standalone_mode=True)
    except StratusError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"  hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
