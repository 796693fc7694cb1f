from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Wire(BaseModel):
    model_config = ConfigDict(from_attributes=True, extra="forbid")


class Problem(BaseModel):
    """The one error shape: stable code, human message, what to do."""

    code: str
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
