"""Projects and members: ``stratus project ...``."""

from __future__ import annotations

from collections.abc import Sequence

import click

from stratuslab.cli import output
from stratuslab.cli.auth import identity, parse_duration
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.schemas.identity import Project, ProjectCreate, ProjectUpdate

HEADERS = ("name", "your role", "max lifetime", "description", "created")
ROLES = click.Choice(["admin", "member", "reader"])


@click.group("project")
def project() -> None:
    """Projects, their members and their policies."""


@project.command("list")
@json_option
@pass_app
def list_(app: AppContext) -> None:
    """Your projects (a cloud admin: all)."""
    projects = identity(app).list_projects()
    output.emit(app, projects, HEADERS, _rows(projects), ids=[p.name for p in projects])


@project.command("create")
@click.argument("name")
@click.option("--description", default="")
@click.option("--max-lifetime", help="Longest an instance may run, e.g. 7d (then stopped).")
@json_option
@pass_app
def create(app: AppContext, name: str, description: str, max_lifetime: str | None) -> None:
    """Create a project (cloud admin)."""
    lifetime = parse_duration(max_lifetime)
    spec = ProjectCreate(
        name=name,
        description=description,
        max_instance_lifetime=int(lifetime) if lifetime is not None else None,
    )
    created = identity(app).create_project(spec)
    output.emit(app, created, HEADERS, _rows([created]))


@project.command("show")
@click.argument("ref", metavar="PROJECT")
@json_option
@pass_app
def show(app: AppContext, ref: str) -> None:
    found = identity(app).get_project(ref)
    if app.json:
        output.print_json(found)
    else:
        output.print_fields(app, ((k, output.text(v)) for k, v in found.model_dump().items()))


@project.command("set")
@click.argument("ref", metavar="PROJECT")
@click.option("--description")
@click.option("--max-lifetime", help="e.g. 7d; 0 removes the limit.")
@json_option
@pass_app
def set_(app: AppContext, ref: str, description: str | None, max_lifetime: str | None) -> None:
    """Change a project's description or instance lifetime limit (project admin)."""
    changes: dict[str, object] = {}
    if description is not None:
        changes["description"] = description
    if max_lifetime is not None:
        changes["max_instance_lifetime"] = (
            0 if max_lifetime == "0" else int(parse_duration(max_lifetime) or 0)
        )
    updated = identity(app).update_project(ref, ProjectUpdate.model_validate(changes))
    output.emit(app, updated, HEADERS, _rows([updated]))


@project.command("delete")
@click.argument("ref", metavar="PROJECT")
@pass_app
def delete(app: AppContext, ref: str) -> None:
    """Delete an empty project that never held resources (cloud admin)."""
    identity(app).delete_project(ref)
    output.info(app, f"deleted: {ref}")


@project.command("members")
@click.argument("ref", metavar="PROJECT")
@json_option
@pass_app
def members(app: AppContext, ref: str) -> None:
    found = identity(app).members(ref)
    output.emit(app, found, ("user", "role"), [(m.user, m.role) for m in found])


@project.command("add")
@click.argument("ref", metavar="PROJECT")
@click.argument("users", metavar="USER...", nargs=-1, required=True)
@click.option("--role", type=ROLES, default="member", show_default=True)
@pass_app
@click.pass_context
def add(ctx: click.Context, app: AppContext, ref: str, users: Sequence[str], role: str) -> None:
    """Add users to a project, or change their role (project admin)."""
    failures = output.Failures()
    for user in users:
        with failures.item():
            member = identity(app).set_member(ref, user, role)
            output.info(app, f"{member.user}: {member.role} in {ref}")
    failures.exit(ctx)


@project.command("remove")
@click.argument("ref", metavar="PROJECT")
@click.argument("users", metavar="USER...", nargs=-1, required=True)
@pass_app
@click.pass_context
def remove(ctx: click.Context, app: AppContext, ref: str, users: Sequence[str]) -> None:
    """Remove users from a project (project admin)."""
    failures = output.Failures()
    for user in users:
        with failures.item():
            identity(app).remove_member(ref, user)
            output.info(app, f"removed {user} from {ref}")
    failures.exit(ctx)


def _rows(projects: Sequence[Project]) -> list[tuple[str, ...]]:
    return [
        (
            p.name,
            p.role or "-",
            f"{p.max_instance_lifetime} s" if p.max_instance_lifetime else "-",
            p.description,
            output.fmt_time(p.created_at),
        )
        for p in projects
    ]
