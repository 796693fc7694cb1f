"""Scopes: what a credential may do, independent of what the user's roles allow.

A scope is ``<service>:read``, ``<service>:write`` or ``admin``. ``write`` implies ``read``
of the same service; ``admin`` implies every scope. A credential without scopes (``None``:
password or certificate login, a token created unscoped) is limited by roles alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from stratuslab.errors import Forbidden, InvalidInput

if TYPE_CHECKING:
    from stratuslab.identity.principal import Principal

SERVICES = ("compute", "images", "volumes", "network", "projects", "usage")
ADMIN_SCOPE = "admin"
ALL_SCOPES = frozenset(
    [ADMIN_SCOPE, *(f"{service}:{level}" for service in SERVICES for level in ("read", "write"))]
)


def parse_scopes(scopes: str | Iterable[str]) -> frozenset[str]:
    """Scopes from a space- or comma-separated string or an iterable; unknown ones refused."""
    items = scopes.replace(",", " ").split() if isinstance(scopes, str) else list(scopes)
    unknown = sorted({s for s in items if s not in ALL_SCOPES})
    if unknown:
        raise InvalidInput(
            f"unknown scope(s): {', '.join(unknown)}",
            hint=f"valid scopes: {', '.join(sorted(ALL_SCOPES))}",
            code="unknown_scope",
        )
    return frozenset(items)


def has_scope(granted: frozenset[str] | None, needed: str) -> bool:
    if granted is None or ADMIN_SCOPE in granted or needed in granted:
        return True
    service, _, level = needed.partition(":")
    return level == "read" and f"{service}:write" in granted


def require_scope(principal: Principal, scope: str) -> None:
    """Raise :class:`Forbidden` unless the principal's credential carries ``scope``."""
    if has_scope(principal.scopes, scope):
        return
    held = ", ".join(sorted(principal.scopes or ())) or "none"
    raise Forbidden(
        f"this credential lacks the scope {scope!r} (it has: {held})",
        hint=f"create a token that includes {scope!r} (`stratus token create --scope {scope}`)",
        code="missing_scope",
        details={"required_scope": scope},
    )
