"""Operations: what a client waits on while slow work happens."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Instance, Operation, OperationTarget, utcnow
from stratuslab.services.access import find_operation
from stratuslab.services.auth import Principal
from stratuslab.types import InstanceStatus, OperationStatus


def op_key(op_id: str) -> str:
    return f"op:{op_id}"


def start(
    session: Session,
    principal: Principal,
    *,
    kind: str,
    instances: Iterable[Instance],
    expect_status: InstanceStatus,
) -> Operation:
    """An operation that succeeds when every instance reaches ``expect_status`` at (or after)
    its current generation, and fails when one of them fails."""
    targets = list(instances)
    op = Operation(
        kind=kind,
        target_type="instance",
        target_ids=[i.id for i in targets],
        expect={
            "status": expect_status.value,
            "generations": {i.id: i.generation for i in targets},
        },
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    session.add(op)
    session.flush()
    session.add_all(OperationTarget(target_id=i.id, operation_id=op.id) for i in targets)
    evaluate(session, op, {i.id: _Target.of(i) for i in targets})
    return op


def get(session: Session, principal: Principal, op_id: str) -> Operation:
    """An operation of a project ``principal`` belongs to (NotFound otherwise)."""
    return find_operation(session, principal, op_id)


class _Target(NamedTuple):
    """What an operation looks at in each of its instances."""

    id: str
    name: str
    status: str
    observed_generation: int
    status_reason: str

    @classmethod
    def of(cls, inst: Instance) -> _Target:
        return cls(inst.id, inst.name, inst.status, inst.observed_generation, inst.status_reason)


def evaluate(session: Session, op: Operation, instances: Mapping[str, _Target]) -> bool:
    """Finish ``op`` if its targets say so; return True when it finished now."""
    if op.status != OperationStatus.RUNNING.value or op.target_type != "instance":
        return False
    want = op.expect.get("status")
    generations: dict[str, int] = op.expect.get("generations", {})
    done = 0
    waiting: list[str] = []
    missing = [t for t in op.target_ids if t not in instances]
    if missing:  # one query for the other targets (a report usually changes one of them)
        rows = session.execute(select(*_TARGET_COLUMNS).where(Instance.id.in_(missing)))
        instances = {**{row.id: _Target(*row) for row in rows}, **instances}
    for target in op.target_ids:
        inst = instances.get(target)
        if inst is None:
            continue
        current = inst.observed_generation >= generations.get(target, 0)
        if inst.status == want and current:
            done += 1
        elif inst.status == InstanceStatus.FAILED.value and (current or want != "deleted"):
            _finish(op, failed=_failure(inst))
            return True
        else:
            waiting.append(f"{inst.name}: {inst.status}")
    if done == len(op.target_ids):
        _finish(op, failed=None)
        return True
    op.progress = f"{done}/{len(op.target_ids)} {want}" + (
        f" ({', '.join(waiting[:3])})" if waiting else ""
    )
    return False


_TARGET_COLUMNS = (
    Instance.id,
    Instance.name,
    Instance.status,
    Instance.observed_generation,
    Instance.status_reason,
)


def _failure(inst: _Target) -> dict[str, Any]:
    return {
        "code": "instance_failed",
        "message": f"instance {inst.name} failed: {inst.status_reason or 'no reason given'}",
        "hint": f"see `stratus events {inst.id}` and `stratus console {inst.id}`",
        "details": {"instance_id": inst.id},
    }


def _finish(op: Operation, *, failed: dict[str, Any] | None) -> None:
    op.status = OperationStatus.FAILED.value if failed else OperationStatus.SUCCEEDED.value
    op.error = failed
    op.finished_at = utcnow()
    op.progress = "failed" if failed else "done"


def fail(op: Operation, *, code: str, message: str) -> None:
    """Finish a running operation as failed (a migration abandoned, ...)."""
    if op.status == OperationStatus.RUNNING.value:
        _finish(op, failed={"code": code, "message": message})


def evaluate_for(session: Session, instances: dict[str, Instance]) -> list[str]:
    """Re-check the open operations that target any of ``instances``; return finished ids."""
    if not instances:
        return []
    waiting_on = select(OperationTarget.operation_id).where(
        OperationTarget.target_id.in_(list(instances))
    )
    open_ops = session.scalars(
        select(Operation)
        .where(Operation.id.in_(waiting_on), Operation.status == OperationStatus.RUNNING.value)
        .order_by(Operation.created_at)
    ).all()
    targets = {iid: _Target.of(inst) for iid, inst in instances.items()}
    return [op.id for op in open_ops if evaluate(session, op, targets)]


def finish_for_target(session: Session, target_id: str, error: dict[str, Any] | None) -> list[str]:
    """Finish the open operations on a non-instance target (an image being saved)."""
    finished = []
    for op in session.scalars(
        select(Operation).where(Operation.status == OperationStatus.RUNNING.value)
    ):
        if target_id in op.target_ids and op.target_type != "instance":
            _finish(op, failed=error)
            finished.append(op.id)
    return finished
