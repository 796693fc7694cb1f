"""The committed OpenAPI document is the API's contract: changes to it are reviewed as API
changes. Regenerate with STRATUS_REGENERATE=1 after a deliberate change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_openapi_document_is_up_to_date(app_client: TestClient) -> None:
    current = app_client.get("/api/v1/openapi.json").json()
    text = json.dumps(current, indent=1, sort_keys=True) + "\n"
    if os.environ.get("STRATUS_REGENERATE") or not DOC.exists():
        DOC.write_text(text)
    assert json.loads(DOC.read_text()) == current, (
        "docs/openapi.json is stale: rerun with STRATUS_REGENERATE=1 and review the diff"
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_operation_documents_the_error_shape(app_client: TestClient) -> None:
    spec = app_client.get("/api/v1/openapi.json").json()
    paths = [p for p in spec["paths"] if p.startswith("/api/v1/")]
    assert {
        "/api/v1/instances",
        "/api/v1/images",
        "/api/v1/operations/{op_id}",
        "/api/v1/agent/desired",
        "/api/v1/hosts/tokens",
    } <= set(paths)
