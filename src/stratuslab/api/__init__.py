"""The controller's REST API (FastAPI), under /api/v1."""
