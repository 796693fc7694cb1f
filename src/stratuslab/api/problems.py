"""The only place where errors become HTTP responses (one shape for all)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stratuslab.errors import StratusError


def problem(
    status: int,
    code: str,
    message: str,
    hint: str = "",
    *,
    category: str | None = None,
    **details: Any,
) -> JSONResponse:
    body = {
        "error": {
            "code": code,
            "category": category or code,
            "message": message,
            "hint": hint,
            "details": details,
        }
    }
    return JSONResponse(status_code=status, content=body)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "request body"


#: RFC 6750 error names for refused bearer credentials
_BEARER_ERRORS = {"unauthorized": "", "no_credentials": ""}


async def on_stratus_error(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StratusError)
    response = problem(
        exc.status, exc.code, exc.message, exc.hint, category=exc.category, **exc.details
    )
    if exc.status == 401:
        # RFC 6750 section 3: say which scheme is expected; no detail beyond the code
        challenge = 'Bearer realm="stratuslab"'
        if exc.code not in _BEARER_ERRORS:
            challenge += ', error="invalid_token"'
        response.headers["WWW-Authenticate"] = challenge
    if exc.status == 429:
        retry = exc.details.get("retry_after")
        if isinstance(retry, int | float) and retry > 0:
            response.headers["Retry-After"] = str(int(retry))
    return response


async def on_validation_error(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem(
            400,
            "malformed_json",
            "the request body is not valid JSON",
            "send a JSON object with Content-Type: application/json",
        )
    described = [f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors]
    return problem(
        422,
        "invalid_input",
        "invalid request: " + "; ".join(described),
        "fix the named fields (see /api/v1/openapi.json for the schema)",
        fields=[_location(e.get("loc", ())) for e in errors],
    )


async def on_http_error(_req: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return problem(404, "not_found", "no such API path", "see /api/v1/docs for the routes")
    if exc.status_code == 405:
        return problem(405, "method_not_allowed", str(exc.detail), "see /api/v1/docs")
    return problem(exc.status_code, "http_error", str(exc.detail))


def install(app: FastAPI) -> None:
    app.add_exception_handler(StratusError, on_stratus_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
