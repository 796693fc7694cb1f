from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Wire(BaseModel):
    """What the API returns: unknown fields from a newer server are ignored."""

    model_config = ConfigDict(from_attributes=True, extra="ignore")


class WireIn(BaseModel):
    """What the API accepts: a misspelt field is an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """The one error shape: stable code, human message, what to do."""

    code: str
    category: str = ""
    message: str
    hint: str = ""
    details: dict[str, Any] = {}


class ErrorEnvelope(BaseModel):
    error: Problem


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class CursorPage(BaseModel, Generic[T]):
    """A page of a list that can be followed by key: pass ``next_cursor`` back as ``cursor``
    for the next page (None: this was the last one). Deep pages cost what the first does.
    ``total`` is counted for a request without a cursor (None otherwise, unless asked for)."""

    items: list[T]
    total: int | None
    limit: int
    offset: int
    next_cursor: str | None = None
