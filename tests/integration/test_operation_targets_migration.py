"""Migration 0008 indexes the targets of the operations still running at the upgrade, so
that reports finish them afterwards."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text

from stratuslab.api.app import build_ctx
from stratuslab.config import ControllerSettings
from stratuslab.db.models import Instance, Operation
from stratuslab.db.session import make_engine
from stratuslab.services import operations
from tests.integration.test_identity_migration import _upgrade


def test_running_operations_are_indexed_at_the_upgrade(database_url: str, tmp_path: Path) -> None:
    _upgrade(database_url, "0007")
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO projects (id, name, created_at) VALUES ('p1', 'x', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO users (id, name, role, default_project_id, ssh_public_keys, "
                "created_at) VALUES ('u1', 'a', 'admin', 'p1', '[]', "
                "CURRENT_TIMESTAMP)"
            )
        )
        for op_id, status in (("op-open", "running"), ("op-done", "succeeded")):
            conn.execute(
                text(
                    "INSERT INTO operations (id, kind, status, target_type, target_ids, expect, "
                    "progress, owner_id, project_id, created_at) VALUES (:id, 'create', "
                    ":status, 'instance', :targets, :expect, '', 'u1', 'p1', CURRENT_TIMESTAMP)"
                ),
                {
                    "id": op_id,
                    "status": status,
                    "targets": json.dumps(["i1", "i2"]),
                    "expect": json.dumps({"status": "running", "generations": {"i1": 1}}),
                },
            )
    engine.dispose()
    ctx = build_ctx(ControllerSettings(data_dir=tmp_path / "d", database_url=database_url))
    try:
        with ctx.sessions() as s:
            rows = s.execute(text("SELECT operation_id, target_id FROM operation_targets"))
            assert sorted(map(tuple, rows)) == [("op-open", "i1"), ("op-open", "i2")]
            # a report about i1 finds the open operation by the index and counts it
            inst = Instance(id="i1", name="vm", status="running", observed_generation=1)
            assert operations.evaluate_for(s, {"i1": inst}) == []  # i2 is not there yet
            op = s.get(Operation, "op-open")
            assert op is not None and op.progress == "1/2 running"
            assert s.get(Operation, "op-done").progress == ""  # type: ignore[union-attr]
    finally:
        ctx.close()
