"""Claiming host capacity for instances, inside the caller's transaction."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host, Instance
from stratuslab.errors import CapacityError
from stratuslab.scheduler.placement import HostSnapshot, Request, fits_anywhere, place
from stratuslab.types import HostState, InstanceStatus

#: statuses that no longer hold capacity on a host
RELEASED = (InstanceStatus.DELETED.value, InstanceStatus.FAILED.value)


def snapshot_hosts(session: Session) -> list[HostSnapshot]:
    """Hosts with their allocations, rows locked until the transaction ends."""
    hosts = list(session.scalars(select(Host).order_by(Host.name).with_for_update()))
    used = {
        host_id: (int(cpu or 0), int(mem or 0))
        for host_id, cpu, mem in session.execute(
            select(Instance.host_id, func.sum(Instance.vcpus), func.sum(Instance.memory_mib))
            .where(Instance.host_id.is_not(None), Instance.status.not_in(RELEASED))
            .group_by(Instance.host_id)
        )
    }
    return [
        HostSnapshot(
            id=h.id,
            name=h.name,
            state=HostState(h.state),
            arch=h.arch,
            vcpus=h.vcpus,
            memory_mib=h.memory_mib,
            vcpus_used=used.get(h.id, (0, 0))[0],
            memory_used_mib=used.get(h.id, (0, 0))[1],
        )
        for h in hosts
    ]


def check_possible(request: Request, hosts: list[HostSnapshot]) -> None:
    """Refuse at once a request no host could ever run."""
    if not hosts:
        raise CapacityError(
            "no hypervisor host has joined this cloud",
            hint="start a node agent (`stratus up` does it for a one-host cloud)",
            code="no_hosts",
        )
    if not fits_anywhere(request, hosts):
        biggest = max(hosts, key=lambda h: (h.memory_mib, h.vcpus))
        raise CapacityError(
            f"the request ({request.vcpus} vCPU, {request.memory_mib} MiB) is bigger than any "
            f"host (the largest has {biggest.vcpus} vCPU, {biggest.memory_mib} MiB)",
            hint="choose a smaller --type (`stratus flavor list`)",
            code="too_big_for_any_host",
        )


def free_ssh_port(session: Session, host_id: str, base: int, count: int) -> int:
    used = set(
        session.scalars(
            select(Instance.ssh_port).where(
                Instance.host_id == host_id, Instance.ssh_port.is_not(None)
            )
        )
    )
    for port in range(base, base + count):
        if port not in used:
            return port
    raise CapacityError(
        f"all {count} forwarded SSH ports of the host are in use",
        hint="raise ssh_port_count in the controller settings or delete instances",
    )


def claim(
    session: Session,
    inst: Instance,
    hosts: list[HostSnapshot],
    *,
    port_base: int,
    port_count: int,
) -> str | None:
    """Place ``inst`` on the best host; return None and set the reason if nothing fits.

    ``hosts`` is updated in place so several claims in one transaction see each other.
    """
    result = place(Request(vcpus=inst.vcpus, memory_mib=inst.memory_mib), hosts)
    if result.host is None:
        inst.status_reason = f"waiting for capacity: {result.reason}"
        return None
    chosen = result.host
    inst.host_id = chosen.id
    inst.ssh_port = free_ssh_port(session, chosen.id, port_base, port_count)
    inst.status = InstanceStatus.SCHEDULED.value
    inst.status_reason = f"placed on {chosen.name}"
    idx = hosts.index(chosen)
    hosts[idx] = HostSnapshot(
        **{
            **chosen.__dict__,
            "vcpus_used": chosen.vcpus_used + inst.vcpus,
            "memory_used_mib": chosen.memory_used_mib + inst.memory_mib,
        }
    )
    host = session.get(Host, chosen.id)
    assert host is not None
    host.desired_generation += 1
    return chosen.id
