"""The one exception tree of StratusLab.

Every error the toolkit raises on purpose is a :class:`StratusError`. Each carries a stable
machine ``code``, a human ``message`` saying what is wrong, and a ``hint`` saying what to do.
The API maps the category to an HTTP status in exactly one place (``api/problems.py``) and the
CLI maps it to an exit code in exactly one place (``cli/output.py``)::

    StratusError
    ├── InvalidInput        bad request data (400/422)          exit 2
    ├── NotFound            unknown id or name (404)            exit 3
    ├── Conflict            duplicate name, wrong state (409)   exit 4
    ├── Unauthorized        missing/invalid credentials (401)   exit 5
    ├── Forbidden           authenticated but not allowed (403) exit 5
    ├── CapacityError       nothing fits (409)                  exit 6
    ├── DriverError         hypervisor / storage failure (502)  exit 7
    │   └── HypervisorUnavailable  libvirt or QEMU missing
    ├── ImageError          not a disk image, checksum mismatch (422) exit 8
    ├── ServiceUnavailable  controller unreachable (503)        exit 9
    ├── OperationTimeout    the client stopped waiting          exit 10
    ├── VerificationError   a signature or checksum is refused  exit 11
    ├── QuotaExceeded       a project or user quota (409)       exit 12
    └── RateLimited         too many attempts (429)             exit 13

On the wire an error is ``{"code", "category", "message", "hint", "details"}``: ``code`` is
specific and stable (``no_hosts``), ``category`` is the class's code (``no_capacity``) so a
client can rebuild the right class for codes it does not know.
"""

from __future__ import annotations

from typing import Any


class StratusError(Exception):
    """Base of every deliberate error: ``code`` (stable), ``message``, ``hint``."""

    code = "error"
    status = 500
    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    @property
    def category(self) -> str:
        return type(self).code

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "category": self.category,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
        }


class InvalidInput(StratusError):
    code = "invalid_input"
    status = 422
    exit_code = 2


class NotFound(StratusError):
    code = "not_found"
    status = 404
    exit_code = 3


class Conflict(StratusError):
    code = "conflict"
    status = 409
    exit_code = 4


class Unauthorized(StratusError):
    code = "unauthorized"
    status = 401
    exit_code = 5


class Forbidden(StratusError):
    code = "forbidden"
    status = 403
    exit_code = 5


class CapacityError(StratusError):
    code = "no_capacity"
    status = 409
    exit_code = 6


class DriverError(StratusError):
    code = "driver_error"
    status = 502
    exit_code = 7


class HypervisorUnavailable(DriverError):
    code = "hypervisor_unavailable"


class ImageError(StratusError):
    code = "image_error"
    status = 422
    exit_code = 8


class ServiceUnavailable(StratusError):
    code = "service_unavailable"
    status = 503
    exit_code = 9


class OperationTimeout(StratusError):
    """The client stopped waiting; the operation goes on in the controller."""

    code = "operation_timeout"
    status = 504
    exit_code = 10


class VerificationError(StratusError):
    """A signature, certificate chain, CRL or checksum did not verify."""

    code = "verification_failed"
    status = 422
    exit_code = 11


class QuotaExceeded(StratusError):
    """A create would take a project or user over its quota (nothing was created)."""

    code = "quota_exceeded"
    status = 409
    exit_code = 12


class RateLimited(StratusError):
    """Too many attempts (failed logins): try again after ``details.retry_after`` seconds."""

    code = "rate_limited"
    status = 429
    exit_code = 13


ERRORS_BY_CODE: dict[str, type[StratusError]] = {
    cls.code: cls
    for cls in (
        InvalidInput,
        NotFound,
        Conflict,
        Unauthorized,
        Forbidden,
        CapacityError,
        DriverError,
        HypervisorUnavailable,
        ImageError,
        ServiceUnavailable,
        OperationTimeout,
        VerificationError,
        QuotaExceeded,
        RateLimited,
    )
}


def error_from_dict(data: dict[str, Any], status: int = 500) -> StratusError:
    """Rebuild an error from its wire form (used by the client)."""
    code = str(data.get("code", "error"))
    cls = ERRORS_BY_CODE.get(code) or ERRORS_BY_CODE.get(str(data.get("category", "")))
    if cls is None:
        cls = next(
            (c for c in ERRORS_BY_CODE.values() if c.status == status and c.code != "error"),
            StratusError,
        )
    return cls(
        str(data.get("message", "unknown error")),
        hint=str(data.get("hint", "")),
        code=code,
        details=data.get("details") or {},
    )
