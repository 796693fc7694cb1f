"""Instance types: the original StratusLab set plus admin-defined ones."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratuslab.db.models import Flavor, Instance
from stratuslab.errors import Conflict, NotFound
from stratuslab.services.auth import Principal

#: name: (vCPU, RAM MiB, swap MiB) — the original toolkit's types (13.02 onwards)
BUILTIN_FLAVORS: dict[str, tuple[int, int, int]] = {
    "t1.micro": (1, 512, 512),
    "m1.small": (1, 1536, 1536),
    "m1.medium": (1, 3072, 3072),
    "m1.large": (2, 6144, 6144),
    "m1.xlarge": (4, 8192, 8192),
    "c1.medium": (2, 1536, 1536),
    "c1.xlarge": (4, 6144, 6144),
}
DEFAULT_FLAVOR = "m1.small"


def ensure_builtin(session: Session, owner_id: str, project_id: str) -> None:
    existing = set(session.scalars(select(Flavor.name)))
    for name, (vcpus, memory, swap) in BUILTIN_FLAVORS.items():
        if name in existing:
            continue
        session.add(
            Flavor(
                name=name,
                vcpus=vcpus,
                memory_mib=memory,
                swap_mib=swap,
                builtin=True,
                is_default=name == DEFAULT_FLAVOR,
                owner_id=owner_id,
                project_id=project_id,
            )
        )


def list_flavors(session: Session) -> list[Flavor]:
    return list(session.scalars(select(Flavor).order_by(Flavor.vcpus, Flavor.memory_mib)))


def get_flavor(session: Session, name: str | None) -> Flavor:
    if name is None:
        flavor = session.scalar(select(Flavor).where(Flavor.is_default.is_(True)))
    else:
        flavor = session.scalar(select(Flavor).where(Flavor.name == name))
    if flavor is None:
        known = ", ".join(f.name for f in list_flavors(session))
        raise NotFound(
            f"flavor {name!r} does not exist",
            hint=f"choose one of: {known} (`stratus flavor list`)",
            code="flavor_not_found",
        )
    return flavor


def create_flavor(
    session: Session,
    principal: Principal,
    *,
    name: str,
    vcpus: int,
    memory_mib: int,
    swap_mib: int,
    disk_gib: int,
) -> Flavor:
    principal.require_admin("creating a flavor")
    flavor = Flavor(
        name=name,
        vcpus=vcpus,
        memory_mib=memory_mib,
        swap_mib=swap_mib,
        disk_gib=disk_gib,
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    session.add(flavor)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a flavor named {name!r} already exists", hint="pick another name") from exc
    return flavor


def delete_flavor(session: Session, principal: Principal, name: str) -> None:
    principal.require_admin("deleting a flavor")
    flavor = get_flavor(session, name)
    if flavor.builtin:
        raise Conflict(
            f"flavor {name!r} is built in and cannot be deleted",
            hint="define a new flavor instead",
        )
    in_use = session.scalar(
        select(Instance.id).where(Instance.flavor_name == name, Instance.status != "deleted")
    )
    if in_use is not None:
        raise Conflict(
            f"flavor {name!r} is used by instance {in_use}",
            hint="delete the instances using it first",
        )
    session.delete(flavor)
