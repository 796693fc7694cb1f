"""Host-bound network state of a placed instance (docs/networking.md, "Placement").

* **PAT of the image's declared ports** (the original StratusLab forwarded 22 plus the inbound
  ports the image metadata declares). An instance whose first addressed NIC is on a ``local``
  or ``private`` network gets a host port (``pat_port_base..+pat_port_count`` of its host,
  nftables on the host) for 22 and for each declared port. An instance with no NICs (QEMU
  user-mode networking, the one-host default) already has its SSH port; each other declared
  port gets a host port of the same range, forwarded by QEMU (``hostfwd`` on 127.0.0.1) and
  kept in the instance's spec (no column for them: ``port_forwards`` rows need a NIC).
* **VXLAN membership**: the hosts carrying a VXLAN network list each other as peers in their
  desired states, so a host that gains or loses an instance on one must be told.

Declared ports come from the image's own metadata document (``Image.metadata_draft``,
``inbound_ports``) or, for a marketplace image, from its newest endorsed entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Image, Instance, InstanceNic, Network, PortForward
from stratuslab.errors import StratusError
from stratuslab.marketplace import store
from stratuslab.marketplace.metadata import parse_metadata
from stratuslab.services import events
from stratuslab.services.context import UnitOfWork
from stratuslab.types import DesiredState, InstanceStatus

#: networks whose instances are reached through the host's address (PAT)
PAT_CLASSES = frozenset({"local", "private"})
#: always forwarded for an instance behind PAT
SSH_PORT = 22
#: Instance.spec: user-mode forwards [{"protocol", "host_port", "target_port", "host_id"}]
USER_FORWARDS = "port_forwards"
#: Instance.spec: forwards to re-create on the next host [{"nic", "protocol", "target_port"}]
MOVED_FORWARDS = "port_forwards_moved"
#: what QEMU's user-mode network gives the guest (shown as the forwards' target)
USER_MODE_GUEST = "10.0.2.15"


def host_key(host_id: str) -> str:
    return f"host:{host_id}"


# -- declared ports ----------------------------------------------------------------------


def declared_ports(session: Session, image: Image | None) -> list[int]:
    """The inbound ports the image's metadata declares (sorted, without 0)."""
    if image is None:
        return []
    ports = _ports(image.metadata_draft)
    if not ports and image.marketplace_id:
        for entry in store.newest_per_endorser(session, image.marketplace_id):
            try:
                ports = list(parse_metadata(entry.metadata_bytes).inbound_ports)
            except (StratusError, ValueError):
                continue
            if ports:
                break
    return sorted({p for p in ports if 1 <= p <= 65535})


def image_ports(session: Session, image_id: str | None) -> list[int]:
    """:func:`declared_ports` of an image by id, read once per session (a create of many
    instances asks once)."""
    memo: dict[str | None, list[int]] = session.info.setdefault("declared_ports", {})
    found = memo.get(image_id)
    if found is None:
        image = session.get(Image, image_id) if image_id is not None else None
        found = memo[image_id] = declared_ports(session, image)
    return found


def _ports(document: dict[str, Any] | None) -> list[int]:
    raw = (document or {}).get("inbound_ports") or []
    if not isinstance(raw, list):
        return []
    return [p for p in raw if isinstance(p, int) and not isinstance(p, bool)]


# -- host ports --------------------------------------------------------------------------


def used_host_ports(session: Session, host_id: str, protocol: str) -> set[int]:
    """Host ports of ``host_id`` forwarded already: PAT rows and user-mode forwards."""
    used = set(
        session.scalars(
            select(PortForward.host_port)
            .where(PortForward.host_id == host_id, PortForward.protocol == protocol)
            .with_for_update()
        )
    )
    for spec in session.scalars(
        select(Instance.spec).where(
            Instance.host_id == host_id, Instance.status != InstanceStatus.DELETED.value
        )
    ):
        for entry in (spec or {}).get(USER_FORWARDS) or []:
            if entry.get("host_id") == host_id and entry.get("protocol") == protocol:
                used.add(int(entry["host_port"]))
    return used


def free_port(used: set[int], base: int, count: int) -> int | None:
    return next((port for port in range(base, base + count) if port not in used), None)


# -- placement hooks ---------------------------------------------------------------------


def placed(
    uow: UnitOfWork, inst: Instance, *, new_nics: Sequence[InstanceNic] | None = None
) -> None:
    """Give ``inst`` (now on ``inst.host_id``) its forwards there; idempotent. Forwards left on
    another host are moved here (new host ports).

    ``new_nics``: ``inst`` was created in this transaction with these NICs (nothing stale
    to move, nothing to read back; its host row is locked by the placement already)."""
    s = uow.session
    if inst.host_id is None or inst.desired == DesiredState.DELETED.value:
        return
    spec = dict(inst.spec or {})
    moved: list[dict[str, Any]] = list(spec.pop(MOVED_FORWARDS, None) or [])
    if new_nics is not None:
        host = s.get(Host, inst.host_id)
        nics = sorted(new_nics, key=lambda nic: nic.index)
    else:
        # the placement transaction locked the host rows already (services/placement.py)
        host = s.get(Host, inst.host_id, with_for_update=True)
        for stale in s.scalars(
            select(PortForward).where(
                PortForward.instance_id == inst.id, PortForward.host_id != inst.host_id
            )
        ):
            moved.append(_moved_entry(s, stale))
            s.delete(stale)
        s.flush()
        nics = _nics(s, inst)
    if host is None:
        return
    declared = image_ports(s, inst.image_id)
    made: list[str] = []
    if nics:
        spec.pop(USER_FORWARDS, None)
        made = _nic_forwards(uow, inst, host, nics, declared, moved)
    else:
        made = _user_forwards(uow, inst, host, spec, declared)
    if spec != (inst.spec or {}):
        inst.spec = spec
    if made:
        events.record(
            s,
            "instance.port_forward",
            f"on host {host.name}: " + ", ".join(made),
            instance_id=inst.id,
            host_id=host.id,
            project_id=inst.project_id,
        )
    touch_vxlan_hosts(uow, {nic.network_id for nic in nics})


def moved(uow: UnitOfWork, inst: Instance, old_host_id: str | None) -> None:
    """``inst`` is about to leave ``old_host_id``: release what binds it there (port forwards,
    user-mode forwards), remember the forwards to make again on the next host, and tell the
    old host and the hosts sharing its VXLAN networks. Leases and MACs stay: addresses are
    managed cloud-wide, so the instance keeps them on its next host."""
    s = uow.session
    spec = dict(inst.spec or {})
    spec.pop(USER_FORWARDS, None)
    moved_list: list[dict[str, Any]] = list(spec.get(MOVED_FORWARDS) or [])
    released = []
    for row in s.scalars(select(PortForward).where(PortForward.instance_id == inst.id)):
        moved_list.append(_moved_entry(s, row))
        released.append(f"{row.protocol}/{row.host_port}")
        s.delete(row)
    if moved_list:
        spec[MOVED_FORWARDS] = moved_list
    if spec != (inst.spec or {}):
        inst.spec = spec
    s.flush()
    hosts = [old_host_id] if old_host_id else []
    touch_vxlan_hosts(uow, {nic.network_id for nic in _nics(s, inst)}, also=hosts)
    if released:
        events.record(
            s,
            "instance.port_forward",
            f"host ports {', '.join(released)} released (the instance moves)",
            instance_id=inst.id,
            host_id=old_host_id,
            project_id=inst.project_id,
        )


def touch_vxlan_hosts(
    uow: UnitOfWork, network_ids: Iterable[str], *, also: Sequence[str] = ()
) -> None:
    """Bump every host carrying one of these networks (the VXLAN ones) so it re-reads its
    peers, and the hosts in ``also``."""
    s = uow.session
    ids = sorted(set(network_ids))
    host_ids = set(also)
    if ids:
        vxlan = select(Network.id).where(Network.id.in_(ids), Network.driver == "vxlan")
        host_ids |= set(
            s.scalars(
                select(Instance.host_id)
                .join(InstanceNic, InstanceNic.instance_id == Instance.id)
                .where(InstanceNic.network_id.in_(vxlan), Instance.host_id.is_not(None))
                .distinct()
            )
        )
    for host_id in sorted(h for h in host_ids if h):
        host = s.get(Host, host_id)
        if host is not None:
            host.bump()
            uow.notify(host_key(host_id))


# -- internals ---------------------------------------------------------------------------


def _nics(session: Session, inst: Instance) -> list[InstanceNic]:
    return list(
        session.scalars(
            select(InstanceNic)
            .where(InstanceNic.instance_id == inst.id)
            .order_by(InstanceNic.index)
        )
    )


def _moved_entry(session: Session, row: PortForward) -> dict[str, Any]:
    nic = session.get(InstanceNic, row.nic_id)
    return {
        "nic": None if nic is None else nic.index,
        "protocol": row.protocol,
        "target_port": row.target_port,
    }


def _nic_forwards(
    uow: UnitOfWork,
    inst: Instance,
    host: Host,
    nics: list[InstanceNic],
    declared: list[int],
    moved: list[dict[str, Any]],
) -> list[str]:
    s = uow.session
    settings = uow.ctx.settings
    primary = next((nic for nic in nics if nic.ipv4 is not None), None)
    by_index = {nic.index: nic for nic in nics}
    wanted: list[tuple[InstanceNic, str, int]] = []
    if primary is not None:
        network = s.get(Network, primary.network_id)
        if network is not None and network.address_class in PAT_CLASSES:
            wanted += [(primary, "tcp", port) for port in (SSH_PORT, *declared)]
    for entry in moved:
        index = entry.get("nic")
        nic = by_index.get(int(index)) if index is not None else primary
        if nic is not None and nic.ipv4 is not None:
            wanted.append((nic, str(entry["protocol"]), int(entry["target_port"])))
    have = {
        (f.nic_id, f.protocol, f.target_port)
        for f in s.scalars(select(PortForward).where(PortForward.instance_id == inst.id))
    }
    made = []
    for nic, protocol, port in wanted:
        if (nic.id, protocol, port) in have:
            continue
        have.add((nic.id, protocol, port))
        used = used_host_ports(s, host.id, protocol)
        host_port = free_port(used, settings.pat_port_base, settings.pat_port_count)
        if host_port is None:
            _exhausted(s, inst, host, protocol, port)
            continue
        s.add(
            PortForward(
                instance_id=inst.id,
                nic_id=nic.id,
                host_id=host.id,
                protocol=protocol,
                host_port=host_port,
                target_port=port,
            )
        )
        s.flush()
        made.append(f"{protocol}/{host_port} -> {nic.ipv4}:{port}")
    return made


def _user_forwards(
    uow: UnitOfWork, inst: Instance, host: Host, spec: dict[str, Any], declared: list[int]
) -> list[str]:
    """User-mode: every declared port but SSH (the instance's ``ssh_port``) gets a host port."""
    settings = uow.ctx.settings
    wanted = [port for port in declared if port != SSH_PORT]
    current = [e for e in spec.get(USER_FORWARDS) or [] if e.get("host_id") == host.id]
    if sorted(int(e["target_port"]) for e in current) == wanted:
        if current:
            spec[USER_FORWARDS] = current
        return []
    spec.pop(USER_FORWARDS, None)
    entries: list[dict[str, Any]] = []
    made = []
    # our own old forwards on this host are given up and do not count as used
    used = used_host_ports(uow.session, host.id, "tcp") - {int(e["host_port"]) for e in current}
    for port in wanted:
        host_port = free_port(used, settings.pat_port_base, settings.pat_port_count)
        if host_port is None:
            _exhausted(uow.session, inst, host, "tcp", port)
            continue
        used.add(host_port)
        entries.append(
            {"protocol": "tcp", "host_port": host_port, "target_port": port, "host_id": host.id}
        )
        made.append(f"tcp/127.0.0.1:{host_port} -> guest:{port}")
    if entries:
        spec[USER_FORWARDS] = entries
    return made


def _exhausted(session: Session, inst: Instance, host: Host, protocol: str, port: int) -> None:
    events.record(
        session,
        "instance.port_forward",
        f"no free host port on {host.name} for {protocol}/{port} declared by the image; "
        "not forwarded (widen pat_port_base/pat_port_count, or remove port forwards)",
        level="warning",
        instance_id=inst.id,
        host_id=host.id,
        project_id=inst.project_id,
    )


def user_forwards(inst: Instance) -> list[dict[str, Any]]:
    """The user-mode forwards of ``inst`` on its current host."""
    return [
        e for e in (inst.spec or {}).get(USER_FORWARDS) or [] if e.get("host_id") == inst.host_id
    ]
