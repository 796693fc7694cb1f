"""Typed HTTP client for the StratusLab REST API (``/api/v1``), returning ``schemas`` objects."""

from stratuslab.client.client import (
    CONNECT_HINT,
    OperationTimeout,
    ProgressCallback,
    StratusClient,
)

__all__ = ["CONNECT_HINT", "OperationTimeout", "ProgressCallback", "StratusClient"]
