"""Operations on volumes: each succeeds when its volume reaches what it expects (a state, a
generation, an attachment made or gone) and fails when the volume or the node's work fails."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Operation, Volume, utcnow
from stratuslab.services.auth import Principal
from stratuslab.services.volume_states import AttachState, VolumeState, attachments_of
from stratuslab.types import OperationStatus


def start_operation(
    session: Session, principal: Principal, vol: Volume, kind: str, **expect: Any
) -> Operation:
    """An operation on ``vol`` that succeeds when ``expect`` holds: ``state``,
    ``generation`` (reached), ``attached`` or ``detached`` (an instance id)."""
    op = Operation(
        kind=kind,
        target_type="volume",
        target_ids=[vol.id],
        expect=expect,
        owner_id=principal.user_id,
        project_id=principal.project_id,
    )
    session.add(op)
    session.flush()
    evaluate_operations(session, {vol.id: vol}, {})
    return op


def evaluate_operations(
    session: Session, vols: dict[str, Volume], failures: dict[str, dict[str, Any]]
) -> list[str]:
    if not vols:
        return []
    finished = []
    for op in session.scalars(
        select(Operation).where(
            Operation.status == OperationStatus.RUNNING.value, Operation.target_type == "volume"
        )
    ):
        vol = vols.get(op.target_ids[0]) if op.target_ids else None
        if vol is None:
            continue
        error = failures.get(vol.id)
        if error is None and vol.state == VolumeState.ERROR.value:
            error = {
                "code": "volume_failed",
                "message": f"volume {vol.name}: {vol.status_reason}",
                "hint": "see `stratus events`",
            }
        if error is not None or _reached(session, vol, op.expect):
            op.status = (OperationStatus.FAILED if error else OperationStatus.SUCCEEDED).value
            op.error = error
            op.finished_at = utcnow()
            op.progress = "failed" if error else "done"
            finished.append(op.id)
        else:
            op.progress = f"volume {vol.name}: {vol.state}"
    return finished


def _reached(session: Session, vol: Volume, expect: dict[str, Any]) -> bool:
    if "state" in expect:
        return vol.state == expect["state"] or (
            expect["state"] == VolumeState.AVAILABLE.value
            and vol.state in (VolumeState.IN_USE.value, VolumeState.ATTACHING.value)
        )
    if "generation" in expect:
        return vol.observed_generation >= int(expect["generation"])
    states = {a.instance_id: a.state for a in attachments_of(session, volume_id=vol.id)}
    if "attached" in expect:
        return states.get(expect["attached"]) == AttachState.ATTACHED.value
    if "detached" in expect:
        return expect["detached"] not in states
    return False
