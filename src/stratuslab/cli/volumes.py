"""Volume commands: ``stratus volume create|list|show|update|delete|attach|detach|snapshot|
clone|grow`` and ``stratus volume quarantine list|release|purge`` (cloud admins)."""

from __future__ import annotations

from collections.abc import Iterable

import click

from stratuslab.cli import output
from stratuslab.cli.context import AppContext, json_option, pass_app
from stratuslab.cli.progress import wait
from stratuslab.client.volumes import VolumesAPI
from stratuslab.schemas.operations import Operation
from stratuslab.schemas.volumes import Volume, VolumeAccepted, VolumeCreate

HEADERS = ("id", "name", "size", "kind", "state", "attached to", "visibility", "created")
DEFAULT_TIMEOUT = 600.0

no_wait_option = click.option(
    "--no-wait", is_flag=True, help="Return once the request is accepted."
)
timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0), default=DEFAULT_TIMEOUT, show_default=True,
    help="Seconds to wait for the operation.",
)  # fmt: skip


@click.group("volume")
def volume() -> None:
    """Manage persistent volumes (disks that outlive instances)."""


@volume.command("create")
@click.argument("name")
@click.option("-s", "--size", type=float, help="Size in GiB (default with --image: the image's).")
@click.option("--image", help="Make a bootable volume holding this image.")
@click.option(
    "--from-instance", "instance", metavar="INSTANCE",
    help="Make a bootable volume holding the root disk of this stopped instance.",
)  # fmt: skip
@click.option("--public", is_flag=True, help="Let everyone attach it (only you delete it).")
@no_wait_option
@timeout_option
@json_option
@pass_app
def create(app: AppContext, name: str, size: float | None, image: str | None,
           instance: str | None, public: bool, no_wait: bool, timeout: float) -> None:  # fmt: skip
    """Create a volume NAME: blank (--size), from an image (--image) or from the root disk of
    a stopped instance (--from-instance), in the volume pool of the instance's host."""
    if image is not None and instance is not None:
        raise click.UsageError("give --image or --from-instance, not both")
    if instance is not None and size is not None:
        raise click.UsageError("--from-instance takes the size of the root disk; drop --size")
    if size is None and image is None and instance is None:
        raise click.UsageError("give --size GiB (or --image IMAGE, or --from-instance INSTANCE)")
    spec = VolumeCreate(
        name=name,
        size_gib=size,
        image=image,
        instance=instance,
        visibility="public" if public else "private",
    )
    _finish(app, _api(app).create(spec), "creating", no_wait=no_wait, timeout=timeout)


@volume.command("list")
@json_option
@pass_app
def list_volumes(app: AppContext) -> None:
    """List the volumes you can see."""
    found = _api(app).list_volumes()
    output.emit(app, found, HEADERS, _rows(found), ids=[v.id for v in found])


@volume.command("show")
@click.argument("ref", metavar="VOLUME")
@json_option
@pass_app
def show(app: AppContext, ref: str) -> None:
    """Show every field of a volume and where it is attached."""
    found = _api(app).get(ref)
    if app.json:
        output.print_json(found)
        return
    fields = found.model_dump(exclude={"attachments"})
    output.print_fields(app, ((k, output.text(v)) for k, v in fields.items()))
    rows = [(a.instance_name, a.target, a.state, "ro" if a.readonly else "rw")
            for a in found.attachments]  # fmt: skip
    if rows:
        output.print_table(app, ("instance", "target", "state", "mode"), rows)


@volume.command("update")
@click.argument("ref", metavar="VOLUME")
@click.option("--name", help="New name.")
@click.option("--visibility", type=click.Choice(["private", "project", "public"]))
@json_option
@pass_app
def update(app: AppContext, ref: str, name: str | None, visibility: str | None) -> None:
    """Rename a volume or change who may use it."""
    changed = _api(app).update(ref, name=name, visibility=visibility)
    output.emit(app, changed, HEADERS, _rows([changed]), ids=[changed.id])


@volume.command("delete")
@click.argument("refs", metavar="VOLUME...", nargs=-1, required=True)
@pass_app
@click.pass_context
def delete(ctx: click.Context, app: AppContext, refs: tuple[str, ...]) -> None:
    """Delete detached volumes (kept in quarantine, then wiped; goes on after an error)."""
    failures = output.Failures()
    for ref in refs:
        with failures.item():
            _api(app).delete(ref)
            output.info(app, f"deleted (quarantined): {ref}")
    failures.exit(ctx)


@volume.command("attach")
@click.argument("ref", metavar="VOLUME")
@click.argument("instance")
@no_wait_option
@timeout_option
@pass_app
def attach(app: AppContext, ref: str, instance: str, no_wait: bool, timeout: float) -> None:
    """Hot-plug VOLUME into a running INSTANCE (the guest finds it by serial)."""
    op = _api(app).attach(ref, instance)
    _wait(app, op, f"attaching {ref}", no_wait=no_wait, timeout=timeout)
    output.info(app, f"attached: {ref} -> {instance}")


@volume.command("detach")
@click.argument("ref", metavar="VOLUME")
@click.option("--instance", help="The instance (needed for a snapshot shared by several).")
@no_wait_option
@timeout_option
@pass_app
def detach(app: AppContext, ref: str, instance: str | None, no_wait: bool,
           timeout: float) -> None:  # fmt: skip
    """Unplug VOLUME from its instance (the guest must release it)."""
    op = _api(app).detach(ref, instance)
    _wait(app, op, f"detaching {ref}", no_wait=no_wait, timeout=timeout)
    output.info(app, f"detached: {ref}")


@volume.command("snapshot")
@click.argument("ref", metavar="VOLUME")
@click.argument("name")
@no_wait_option
@timeout_option
@json_option
@pass_app
def snapshot(app: AppContext, ref: str, name: str, no_wait: bool, timeout: float) -> None:
    """Take a read-only point-in-time snapshot NAME of VOLUME."""
    _finish(app, _api(app).snapshot(ref, name), "snapshot", no_wait=no_wait, timeout=timeout)


@volume.command("clone")
@click.argument("ref", metavar="VOLUME")
@click.argument("name")
@no_wait_option
@timeout_option
@json_option
@pass_app
def clone(app: AppContext, ref: str, name: str, no_wait: bool, timeout: float) -> None:
    """Make a writable copy NAME of VOLUME (or of a snapshot)."""
    _finish(app, _api(app).clone(ref, name), "cloning", no_wait=no_wait, timeout=timeout)


@volume.command("grow")
@click.argument("ref", metavar="VOLUME")
@click.argument("size", type=float, metavar="GIB")
@no_wait_option
@timeout_option
@pass_app
def grow(app: AppContext, ref: str, size: float, no_wait: bool, timeout: float) -> None:
    """Grow a detached VOLUME to GIB."""
    _wait(app, _api(app).grow(ref, size), f"growing {ref}", no_wait=no_wait, timeout=timeout)
    output.info(app, f"grown: {ref} ({size:g} GiB)")


@volume.group("quarantine")
def quarantine() -> None:
    """Deleted data kept before it is wiped (cloud admins)."""


@quarantine.command("list")
@json_option
@pass_app
def quarantine_list(app: AppContext) -> None:
    """List quarantined volumes and instance disks with when they are wiped."""
    found = _api(app).quarantine()
    headers = ("id", "name", "size", "kind", "owner", "wiped after")
    rows = [(v.id, v.name, output.fmt_bytes(v.size_bytes), v.kind, output.short_id(v.owner_id),
             output.fmt_time(v.quarantine_until)) for v in found]  # fmt: skip
    output.emit(app, found, headers, rows, ids=[v.id for v in found])


@quarantine.command("release")
@click.argument("volume_id")
@json_option
@pass_app
def quarantine_release(app: AppContext, volume_id: str) -> None:
    """Give a quarantined volume back to its owner."""
    released = _api(app).release(volume_id)
    output.emit(app, released, HEADERS, _rows([released]), ids=[released.id])


@quarantine.command("purge")
@click.argument("volume_id")
@no_wait_option
@timeout_option
@pass_app
def quarantine_purge(app: AppContext, volume_id: str, no_wait: bool, timeout: float) -> None:
    """Wipe a quarantined volume now."""
    op = _api(app).purge(volume_id)
    _wait(app, op, f"wiping {volume_id}", no_wait=no_wait, timeout=timeout)
    output.info(app, f"purged: {volume_id}")


# -- helpers -------------------------------------------------------------------------------


def _api(app: AppContext) -> VolumesAPI:
    return VolumesAPI(app.client)


def _wait(app: AppContext, op: Operation, label: str, *, no_wait: bool, timeout: float) -> None:
    if not no_wait:
        wait(app, op, timeout=timeout, label=label)


def _finish(
    app: AppContext, accepted: VolumeAccepted, label: str, *, no_wait: bool, timeout: float
) -> None:
    vol = accepted.volume
    _wait(app, accepted.operation, f"{label} {vol.name}", no_wait=no_wait, timeout=timeout)
    if not no_wait:
        vol = _api(app).get(vol.id)
    output.emit(app, vol, HEADERS, _rows([vol]), ids=[vol.id])


def _rows(vols: Iterable[Volume]) -> list[tuple[str, ...]]:
    return [
        (
            output.short_id(v.id),
            v.name,
            output.fmt_bytes(v.size_bytes),
            v.kind + (" (ro)" if v.readonly else ""),
            v.state,
            ", ".join(f"{a.instance_name}:{a.target}" for a in v.attachments) or "-",
            v.visibility,
            output.fmt_time(v.created_at),
        )
        for v in vols
    ]
