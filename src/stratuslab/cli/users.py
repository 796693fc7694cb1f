"""Users, linked identities and registrations: ``stratus user ...``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from stratuslab.cli import output
from stratuslab.cli.auth import identity
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.schemas.identity import RegistrationDecision, User, UserCreate, UserUpdate

HEADERS = ("name", "status", "admin", "projects", "email", "created")


@click.group("user")
def user() -> None:
    """Users (cloud admins; `stratus user show me` for yourself)."""


@user.command("list")
@json_option
@pass_app
def list_(app: AppContext) -> None:
    users = identity(app).list_users()
    output.emit(app, users, HEADERS, _rows(users), ids=[u.name for u in users])


@user.command("create")
@click.argument("name")
@click.option("--email", default="")
@click.option("--full-name", default="")
@click.option("--project", help="Join this project as a member (default: a new own project).")
@click.option("--cloud-admin", is_flag=True, help="Make the user a cloud administrator.")
@click.option("--password", "ask_password", is_flag=True, help="Ask for a password to set.")
@json_option
@pass_app
def create(
    app: AppContext,
    name: str,
    email: str,
    full_name: str,
    project: str | None,
    cloud_admin: bool,
    ask_password: bool,
) -> None:
    """Create a user (cloud admin)."""
    password = _new_password() if ask_password else None
    spec = UserCreate(
        name=name,
        email=email,
        full_name=full_name,
        project=project,
        cloud_admin=cloud_admin,
        password=password,
    )
    created = identity(app).create_user(spec)
    output.emit(app, created, HEADERS, _rows([created]))


@user.command("show")
@click.argument("ref", metavar="USER", default="me")
@json_option
@pass_app
def show(app: AppContext, ref: str) -> None:
    found = identity(app).get_user(ref)
    if app.json:
        output.print_json(found)
    else:
        output.print_fields(app, ((k, output.text(v)) for k, v in found.model_dump().items()))


@user.command("set-password")
@click.argument("ref", metavar="USER", default="me")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read current and new from stdin.")
@pass_app
def set_password(app: AppContext, ref: str, from_stdin: bool) -> None:
    """Change your password (or, as a cloud admin, anyone's)."""
    me = identity(app).whoami()
    own = ref in ("me", me.user, me.user_id)
    if from_stdin:
        current = sys.stdin.readline().rstrip("\n") if own else None
        new = sys.stdin.readline().rstrip("\n")
    else:
        current = click.prompt("Current password", hide_input=True) if own else None
        new = _new_password()
    spec = UserUpdate(password=new, current_password=current or None)
    identity(app).update_user(ref, spec)
    output.info(app, "password changed")


@user.command("disable")
@click.argument("ref", metavar="USER")
@pass_app
def disable(app: AppContext, ref: str) -> None:
    """Disable a user and revoke their tokens (cloud admin)."""
    identity(app).disable_user(ref)
    output.info(app, f"disabled: {ref}")


@user.command("enable")
@click.argument("ref", metavar="USER")
@pass_app
def enable(app: AppContext, ref: str) -> None:
    identity(app).update_user(ref, UserUpdate(status="active"))
    output.info(app, f"enabled: {ref}")


@user.command("link")
@click.argument("ref", metavar="USER")
@click.option("--dn", help="A certificate subject DN (/DC=org/.../CN=Jane or RFC 4514).")
@click.option("--oidc", help="An OIDC identity: ISSUER#SUBJECT.")
@pass_app
def link(app: AppContext, ref: str, dn: str | None, oidc: str | None) -> None:
    """Link a certificate DN or an OIDC identity to a user (cloud admin)."""
    if (dn is None) == (oidc is None):
        raise click.UsageError("give exactly one of --dn and --oidc")
    kind, subject = ("x509", dn) if dn is not None else ("oidc", oidc)
    assert subject is not None
    linked = identity(app).link(ref, kind, subject)
    output.info(app, f"linked {linked.kind} {linked.subject} to {ref} ({linked.id})")


@user.command("identities")
@click.argument("ref", metavar="USER", default="me")
@json_option
@pass_app
def identities(app: AppContext, ref: str) -> None:
    found = identity(app).identities(ref)
    output.emit(app, found, ("id", "kind", "subject"), [(i.id, i.kind, i.subject) for i in found])


@user.command("unlink")
@click.argument("ref", metavar="USER")
@click.argument("identity_id")
@pass_app
def unlink(app: AppContext, ref: str, identity_id: str) -> None:
    identity(app).unlink(ref, identity_id)
    output.info(app, f"unlinked {identity_id}")


@user.command("registrations")
@click.option("--status", help="pending_email, pending_approval, approved or rejected.")
@json_option
@pass_app
def registrations(app: AppContext, status: str | None) -> None:
    """Self-registration requests (cloud admin)."""
    found = identity(app).registrations(status)
    rows = [(r.id, r.user, r.email, r.status, output.fmt_time(r.created_at)) for r in found]
    output.emit(app, found, ("id", "user", "email", "status", "created"), rows)


@user.command("approve")
@click.argument("reg_id", metavar="REGISTRATION")
@click.option("--project", help="Project to join (default: a new own project).")
@click.option("--role", type=click.Choice(["admin", "member", "reader"]), default="member")
@pass_app
def approve(app: AppContext, reg_id: str, project: str | None, role: str) -> None:
    decision = RegistrationDecision.model_validate({"project": project, "role": role})
    done = identity(app).decide(reg_id, True, decision)
    output.info(app, f"approved: {done.user}")


@user.command("reject")
@click.argument("reg_id", metavar="REGISTRATION")
@click.option("--reason", default="", help="Told to the applicant.")
@pass_app
def reject(app: AppContext, reg_id: str, reason: str) -> None:
    done = identity(app).decide(reg_id, False, RegistrationDecision(reason=reason))
    output.info(app, f"rejected: {done.user}")


def _new_password() -> str:
    return str(click.prompt("New password", hide_input=True, confirmation_prompt=True))


def _rows(users: Sequence[User]) -> list[tuple[str, ...]]:
    return [
        (
            u.name,
            u.status,
            "yes" if u.cloud_admin else "",
            ", ".join(f"{p}:{r}" for p, r in sorted(u.projects.items())),
            u.email,
            output.fmt_time(u.created_at),
        )
        for u in users
    ]
