"""Typed HTTP client for the StratusLab REST API (``/api/v1``), returning ``schemas`` objects."""

from stratuslab.client.client import CONNECT_HINT, ProgressCallback, StratusClient
from stratuslab.errors import OperationTimeout

__all__ = ["CONNECT_HINT", "OperationTimeout", "ProgressCallback", "StratusClient"]
