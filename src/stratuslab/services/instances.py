"""Instance lifecycle: create, stop, start, reboot, delete — all level-triggered.

The controller only writes what should be (``desired``, ``generation``); the node agent
converges and reports what is (``status``, ``observed_generation``).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from stratuslab.context.schema import validate_user_data
from stratuslab.context.spec import ContextMethod, validate_pair
from stratuslab.context.userdata import check_user_data_size
from stratuslab.db.models import Flavor, Host, Image, Instance, Operation, new_id, utcnow
from stratuslab.errors import Conflict, InvalidInput
from stratuslab.identity.authz import Action
from stratuslab.scheduler import Request, parse_requirements
from stratuslab.schemas.instances import InstanceCreate
from stratuslab.services import (
    access,
    events,
    networks,
    operations,
    quarantine,
    quotas,
    volumes,
)
from stratuslab.services.auth import Principal
from stratuslab.services.context import UnitOfWork
from stratuslab.services.flavors import get_flavor
from stratuslab.services.marketplace_images import (
    load_site_policy,
    policy_path,
    resolve_image,
)
from stratuslab.services.placement import Placer, request_for, waiting_since
from stratuslab.services.volume_lifecycle import get_volume
from stratuslab.services.volume_pools import pool_shared
from stratuslab.types import DesiredState, InstanceStatus

SSH_KEY = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")


def host_key(host_id: str) -> str:
    return f"host:{host_id}"


def list_instances(
    session: Session,
    principal: Principal,
    *,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    include_deleted: bool = False,
    project_id: str | None = None,
    after: tuple[Any, str] | None = None,
    count: bool = True,
) -> tuple[list[Instance], int | None]:
    """The instances ``principal`` may see (every project of theirs; ``project_id`` narrows),
    oldest first, and how many there are (None unless ``count``).

    ``after`` (the ``created_at`` datetime and ``id`` of the last row of the previous page)
    pages by key: the index on (created_at, id) starts the scan right there, whatever the
    depth, where ``offset`` has to walk past every row before it."""
    cond = [access.instances_visible(principal)]
    if project_id is not None:
        cond.append(Instance.project_id == project_id)
    if status:
        cond.append(Instance.status == status)
    elif not include_deleted:
        cond.append(Instance.status != InstanceStatus.DELETED.value)
    total = (
        (session.scalar(select(func.count()).select_from(Instance).where(*cond)) or 0)
        if count
        else None
    )
    stmt = select(Instance).where(*cond)
    if after is not None:
        from sqlalchemy import literal, tuple_

        created_at, last_id = after
        key = tuple_(literal(created_at, Instance.created_at.type), literal(last_id))
        stmt = stmt.where(tuple_(Instance.created_at, Instance.id) > key)
    rows = session.scalars(
        stmt.order_by(Instance.created_at, Instance.id)
        .limit(min(max(limit, 1), 1000))
        .offset(max(offset, 0))
    )
    return list(rows), total


def get_instance(
    session: Session, principal: Principal, ref: str, *, action: Action = Action.READ
) -> Instance:
    """An instance by id or name; NotFound if hidden from ``principal``, Forbidden if it may
    not ``action`` it (services/access.py)."""
    return access.find_instance(session, principal, ref, action)


def _names(session: Session, principal: Principal, req: InstanceCreate) -> list[str]:
    if req.name is None:
        return [f"vm-{uuid.uuid4().hex[:8]}" for _ in range(req.count)]
    names = [req.name] if req.count == 1 else [f"{req.name}-{i}" for i in range(1, req.count + 1)]
    taken = session.scalar(
        select(Instance.name).where(
            Instance.project_id == principal.project_id,
            Instance.name.in_(names),
            Instance.status != InstanceStatus.DELETED.value,
        )
    )
    if taken is not None:
        raise Conflict(
            f"an instance named {taken!r} already exists",
            hint="choose another --name, or kill the old instance first",
            code="duplicate_name",
        )
    return names


def _validate_keys(keys: list[str]) -> list[str]:
    clean = [k.strip() for k in keys if k.strip()]
    for key in clean:
        if not SSH_KEY.match(key):
            raise InvalidInput(
                f"not an SSH public key: {key[:40]!r}...",
                hint="pass the .pub file (e.g. --key ~/.ssh/id_ed25519.pub), not the private key",
                code="invalid_ssh_key",
            )
    return clean


def _context_spec(req: InstanceCreate, default_method: str, schema_check: str) -> dict[str, Any]:
    """Validate user data and context pairs before anything is created."""
    method = req.context_method or default_method
    try:
        ContextMethod(method)
    except ValueError as exc:
        raise InvalidInput(
            f"unknown context method {method!r}",
            hint=f"use one of: {', '.join(m.value for m in ContextMethod)}",
        ) from exc
    for key, value in req.context.items():
        validate_pair(key, value)
    if req.user_data is not None:
        try:
            payload = base64.b64decode(req.user_data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(
                "user_data is not valid base64",
                hint="send the user data base64-encoded (`stratus run --user-data FILE` does it)",
                code="invalid_user_data",
            ) from exc
        check_user_data_size(payload)
        if schema_check != "off":
            validate_user_data(payload, require_schema=schema_check == "require")
    return {"user_data": req.user_data, "context_method": method, "context": dict(req.context)}


def _scheduling(req: InstanceCreate, default_ha: str) -> dict[str, Any]:
    """Check the scheduling hints before anything is created (a bad expression: 422 with
    the position)."""
    requirements = (req.requirements or "").strip() or None
    if requirements is not None:
        parse_requirements(requirements)
    ha = req.ha_policy or default_ha
    if ha == "migrate" and req.boot_volume is None:
        raise InvalidInput(
            "HA policy 'migrate' moves the instance with its disks, so they must be on shared "
            "storage: this instance's root disk would be local to its host",
            hint="boot from a volume in an iSCSI pool (--boot-volume), or use --ha restart",
            code="ha_needs_shared_storage",
        )
    return {
        "requirements": requirements,
        "affinity_group": req.affinity_group,
        "anti_affinity_group": req.anti_affinity_group,
        "ha_policy": ha,
    }


def _volume_host(s: Session, principal: Principal, req: InstanceCreate) -> str | None:
    """The host the instance must run on because its volumes (boot or data) are in that
    host's local pool; volumes in shared pools (iSCSI, shared mounts) are opened anywhere."""
    pins: dict[str, str] = {}
    refs = [req.boot_volume] if req.boot_volume else []
    for ref in [*refs, *req.volumes]:
        vol = get_volume(s, principal, ref)
        if vol.host_id and not pool_shared(s, vol.host_id):
            pins.setdefault(vol.host_id, vol.name)
    if len(pins) > 1:
        raise Conflict(
            f"volumes {' and '.join(sorted(pins.values()))} are in the local pools of "
            "different hosts: no instance can have both",
            hint="use volumes of one host, or volumes in a shared (iSCSI) pool",
            code="volumes_on_different_hosts",
        )
    return next(iter(pins), None)


def claim(placer: Placer, inst: Instance, image: Image | None) -> str | None:
    """Place ``inst``: where the scheduler says, or on the host its local volumes pin it to."""
    request = request_for(inst, image)
    pin = inst.spec.get("pinned_host")
    if not pin:
        return placer.claim(inst, request)
    problem = placer.claim_on(inst, request, str(pin))
    if problem is None:
        return str(pin)
    inst.status_reason = f"waiting for the host that holds its volumes: {problem}"
    return None


def create_instances(
    uow: UnitOfWork, principal: Principal, req: InstanceCreate
) -> tuple[Operation, list[Instance]]:
    s = uow.session
    settings = uow.ctx.settings
    policy = load_site_policy(policy_path(settings.data_dir))
    image = resolve_image(s, principal, req.image, policy=policy, now=utcnow())
    flavor = get_flavor(s, req.flavor)
    quotas.check_create(
        s,
        principal,
        quotas.instances_request(count=req.count, vcpus=flavor.vcpus, memory_mib=flavor.memory_mib),
    )
    keys = _validate_keys(req.ssh_keys)
    volumes.check_create_request(req.volumes, req.volatile_disks, req.count)
    context = _context_spec(req, settings.context_method, settings.cloud_config_schema)
    hints = _scheduling(req, settings.default_ha_policy)
    pin = _volume_host(s, principal, req)
    names = _names(s, principal, req)
    placer = Placer(s, settings)
    placer.check_possible(
        Request(vcpus=flavor.vcpus, memory_mib=flavor.memory_mib, disk_gib=flavor.disk_gib)
    )
    if pin is not None:
        context = {**context, "pinned_host": pin}
    created = [
        _create_one(uow, principal, req, placer, name, image, flavor, keys, context, hints)
        for name in names
    ]
    s.flush()
    op = operations.start(
        s,
        principal,
        kind="instance.create",
        instances=created,
        expect_status=InstanceStatus.RUNNING,
    )
    return op, created


def _create_one(
    uow: UnitOfWork,
    principal: Principal,
    req: InstanceCreate,
    placer: Placer,
    name: str,
    image: Image,
    flavor: Flavor,
    keys: list[str],
    context: dict[str, Any],
    hints: dict[str, Any],
) -> Instance:
    s = uow.session
    inst = Instance(
        id=new_id(),
        name=name,
        image_id=image.id,
        flavor_name=flavor.name,
        vcpus=flavor.vcpus,
        memory_mib=flavor.memory_mib,
        disk_gib=flavor.disk_gib,
        spec={"ssh_keys": keys, "hostname": name.lower(), **context},
        desired=DesiredState.RUNNING.value,
        status=InstanceStatus.PENDING.value,
        owner_id=principal.user_id,
        project_id=principal.project_id,
        pending_since=utcnow(),
        **hints,
    )
    s.add(inst)
    host_id = claim(placer, inst, image)
    events.record(
        s,
        "instance.created",
        f"instance {name} created from image {image.name} ({flavor.name}); " + inst.status_reason,
        instance_id=inst.id,
        host_id=host_id,
        project_id=principal.project_id,
    )
    volumes.attach_at_create(uow, principal, inst, req.volumes, req.volatile_disks, req.boot_volume)
    networks.attach_at_create(uow, principal, inst, req.networks, req.security_group)
    if host_id is not None:  # attach_at_create made its host ports (networks.instance_placed)
        uow.notify(host_key(host_id))
    return inst


def _bump(inst: Instance) -> None:
    inst.generation += 1
    inst.updated_at = utcnow()


def _touch_host(uow: UnitOfWork, inst: Instance) -> None:
    if inst.host_id is None:
        return
    host = uow.session.get(Host, inst.host_id)
    if host is not None:
        host.bump()
    uow.notify(host_key(inst.host_id))


def act(
    uow: UnitOfWork, principal: Principal, ref: str, action: str, *, hard: bool = False
) -> Operation:
    s = uow.session
    inst = get_instance(s, principal, ref)
    if inst.desired == DesiredState.DELETED.value:
        raise Conflict(f"instance {inst.name} is being deleted", hint="nothing more to do")
    if action == "stop":
        expect = InstanceStatus.STOPPED
        if inst.desired != DesiredState.STOPPED.value:
            inst.desired = DesiredState.STOPPED.value
            _bump(inst)
    elif action == "start":
        expect = InstanceStatus.RUNNING
        if inst.desired != DesiredState.RUNNING.value or inst.status == "failed":
            inst.desired = DesiredState.RUNNING.value
            if inst.status == InstanceStatus.FAILED.value:
                inst.status = (
                    InstanceStatus.SCHEDULED.value if inst.host_id else InstanceStatus.PENDING.value
                )
            _bump(inst)
    elif action == "reboot":
        if inst.status != InstanceStatus.RUNNING.value:
            raise Conflict(
                f"instance {inst.name} is {inst.status}, not running",
                hint=f"start it with `stratus start {inst.name}`",
                code="not_running",
            )
        expect = InstanceStatus.RUNNING
        inst.reboot_seq += 1
        inst.reboot_hard = hard
        _bump(inst)
    else:
        raise InvalidInput(f"unknown action {action!r}", hint="use start, stop or reboot")
    events.record(
        s,
        f"instance.{action}",
        f"{'hard ' if hard and action == 'reboot' else ''}{action} requested",
        instance_id=inst.id,
        project_id=inst.project_id,
    )
    _touch_host(uow, inst)
    return operations.start(
        s, principal, kind=f"instance.{action}", instances=[inst], expect_status=expect
    )


def delete(uow: UnitOfWork, principal: Principal, ref: str) -> Operation:
    s = uow.session
    inst = get_instance(s, principal, ref)
    if inst.desired != DesiredState.DELETED.value:
        inst.desired = DesiredState.DELETED.value
        _bump(inst)
        if inst.host_id is None or inst.status == InstanceStatus.PENDING.value:
            mark_deleted(inst)
        events.record(
            s,
            "instance.delete",
            "delete requested",
            instance_id=inst.id,
            project_id=inst.project_id,
        )
        _touch_host(uow, inst)
        quarantine.keep_root_disk(uow, inst)
        volumes.instance_deleted(uow, inst)
        networks.instance_deleted(uow, inst)
    return operations.start(
        s,
        principal,
        kind="instance.delete",
        instances=[inst],
        expect_status=InstanceStatus.DELETED,
    )


def mark_deleted(inst: Instance) -> None:
    inst.status = InstanceStatus.DELETED.value
    inst.observed_generation = inst.generation
    inst.deleted_at = utcnow()
    inst.ssh_port = None


def place_pending(uow: UnitOfWork) -> int:
    """Retry placing pending instances; fail those pending too long. Returns placed count."""
    s = uow.session
    settings = uow.ctx.settings
    pending = list(
        s.scalars(
            select(Instance)
            .where(
                Instance.status == InstanceStatus.PENDING.value,
                Instance.desired == DesiredState.RUNNING.value,
            )
            .order_by(Instance.created_at)
            .limit(500)
        )
    )
    if not pending:
        return 0
    placer = Placer(s, settings)
    images = {
        i.id: i for i in s.scalars(select(Image).where(Image.id.in_({p.image_id for p in pending})))
    }
    placed = 0
    for inst in pending:
        host_id = claim(placer, inst, images.get(inst.image_id))
        if host_id is not None:
            placed += 1
            networks.instance_placed(uow, inst)
            uow.notify(host_key(host_id))
            events.record(
                s,
                "instance.scheduled",
                inst.status_reason,
                instance_id=inst.id,
                host_id=host_id,
                project_id=inst.project_id,
            )
        elif waiting_since(inst) > settings.pending_timeout:
            inst.status = InstanceStatus.FAILED.value
            inst.status_reason = (
                f"no host could take it within {settings.pending_timeout:.0f} s; "
                f"{inst.status_reason}"
            )
            inst.observed_generation = inst.generation
            events.record(
                s,
                "instance.failed",
                inst.status_reason,
                level="error",
                instance_id=inst.id,
                project_id=inst.project_id,
            )
            operations.evaluate_for(s, {inst.id: inst})
    return placed
