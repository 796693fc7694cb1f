"""The one place that decides authorization.

Every route that touches an owned resource calls :func:`authorize` (one resource) or
:func:`read_filter` (lists). The rules, in the order they are applied:

1. **Visibility** (failure: :class:`NotFound`, exactly like a missing resource, so nothing
   leaks). A cloud admin sees everything. Anyone sees ``public`` resources. A member of
   the resource's project (any role) sees ``project`` resources; a ``private`` resource is
   seen by its owner and by the project's admins. For ``create`` the "resource" is the
   target project: only its members see it.
2. **Scope** (failure: :class:`Forbidden`): the credential must carry ``<service>:read`` for
   ``read``/``use`` and ``<service>:write`` for the others (``admin`` for cloud-admin bypass).
3. **Role** (failure: :class:`Forbidden`), for a visible resource:

   * ``read``: allowed.
   * ``use`` (launch from an image, attach a volume): a ``member`` or ``admin`` of the
     project the request acts in; a ``reader`` cannot create anything.
   * ``create``: ``member`` or ``admin`` of the target project.
   * ``update``/``delete``: same project, and either the owner with the ``member`` role or
     a project ``admin``. Other projects' public resources are read-only.
   * ``manage`` (members, quotas, lifetime policy of a project): project ``admin``.

   A cloud admin (with the ``admin`` scope, or an unscoped credential) may do anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from stratuslab.errors import Forbidden, NotFound
from stratuslab.identity.principal import Principal
from stratuslab.identity.scopes import require_scope
from stratuslab.types import Role


class Action(StrEnum):
    READ = "read"
    USE = "use"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    MANAGE = "manage"


class Visibility(StrEnum):
    PRIVATE = "private"
    PROJECT = "project"
    PUBLIC = "public"


class Kind(StrEnum):
    """Resource kinds; each belongs to the service its scopes are named after."""

    INSTANCE = "instance"
    OPERATION = "operation"
    FLAVOR = "flavor"
    IMAGE = "image"
    VOLUME = "volume"
    ADDRESS = "address"
    PROJECT = "project"
    USAGE = "usage"

    @property
    def service(self) -> str:
        return _SERVICE[self]


_SERVICE = {
    Kind.INSTANCE: "compute",
    Kind.OPERATION: "compute",
    Kind.FLAVOR: "compute",
    Kind.IMAGE: "images",
    Kind.VOLUME: "volumes",
    Kind.ADDRESS: "network",
    Kind.PROJECT: "projects",
    Kind.USAGE: "usage",
}
_READING = frozenset({Action.READ, Action.USE})
_CAN_CREATE = frozenset({Role.ADMIN, Role.MEMBER})


def required_scope(kind: Kind, action: Action) -> str:
    return f"{kind.service}:{'read' if action in _READING else 'write'}"


def authorize(
    principal: Principal,
    action: Action,
    *,
    kind: Kind,
    resource_owner_project: str,
    resource_visibility: Visibility,
    resource_owner_user: str,
    ref: str = "",
) -> None:
    """Return if ``principal`` may do ``action``; raise NotFound or Forbidden otherwise.

    ``ref`` is what the caller asked for (id or name); it is echoed in the NotFound message
    so that a hidden resource reads exactly like a missing one.
    """
    if not can_see(
        principal, action, resource_owner_project, resource_visibility, resource_owner_user
    ):
        raise _not_found(kind, action, ref or resource_owner_project)
    require_scope(principal, required_scope(kind, action))
    if principal.is_admin:
        return
    problem = _role_problem(principal, action, resource_owner_project, resource_owner_user)
    if problem is not None:
        raise Forbidden(
            f"you may not {action.value} this {kind.value}: {problem}",
            hint="ask an admin of the project for a role that allows it",
            code="not_allowed",
            details={"action": action.value, "kind": kind.value},
        )


def can_see(
    principal: Principal,
    action: Action,
    project_id: str,
    visibility: Visibility,
    owner_id: str,
) -> bool:
    if principal.is_admin:
        return True
    role = principal.role_in(project_id)
    if action is Action.CREATE:
        return role is not None
    if visibility is Visibility.PUBLIC:
        return True
    if role is None:
        return False
    return visibility is Visibility.PROJECT or owner_id == principal.user_id or role is Role.ADMIN


def _role_problem(
    principal: Principal, action: Action, project_id: str, owner_id: str
) -> str | None:
    role = principal.role_in(project_id)
    if action is Action.READ:
        return None
    if action is Action.USE:
        acting = principal.role
        return None if acting in _CAN_CREATE else f"your role in this project is {_name(acting)}"
    if role is None:
        return "it belongs to another project"
    if action is Action.CREATE:
        return None if role in _CAN_CREATE else f"your role in the project is {_name(role)}"
    if action is Action.MANAGE:
        return None if role is Role.ADMIN else "only the project's admins may manage it"
    if role is Role.ADMIN or (role is Role.MEMBER and owner_id == principal.user_id):
        return None
    if role is Role.MEMBER:
        return "it belongs to another user (a project admin may do this)"
    return f"your role in the project is {_name(role)}"


def _name(role: Role | None) -> str:
    if role is None:
        return "none"
    return f"{role.value!r} (read-only)" if role is Role.READER else repr(role.value)


def _not_found(kind: Kind, action: Action, ref: str) -> NotFound:
    if action is Action.CREATE:
        return NotFound(
            f"project {ref!r} does not exist",
            hint="list your projects with `stratus project list`",
            code="project_not_found",
        )
    return NotFound(
        f"{kind.value} {ref!r} does not exist",
        hint=f"list what you can see with `stratus {kind.value} list`",
        code=f"{kind.value}_not_found",
    )


@dataclass(frozen=True)
class ReadFilter:
    """What a principal may list, as data a query builder turns into one WHERE clause.

    A row is visible when: ``everything``, or visibility is public, or its project is in
    ``all_in`` (project admin: private rows too), or its project is in ``shared_in`` and
    (visibility is ``project`` or the owner is ``user_id``).
    """

    everything: bool
    user_id: str
    all_in: frozenset[str]
    shared_in: frozenset[str]

    def allows(self, project_id: str, visibility: Visibility, owner_id: str) -> bool:
        return (
            self.everything
            or visibility is Visibility.PUBLIC
            or project_id in self.all_in
            or (
                project_id in self.shared_in
                and (visibility is Visibility.PROJECT or owner_id == self.user_id)
            )
        )


def read_filter(principal: Principal, kind: Kind) -> ReadFilter:
    """The list-endpoint twin of ``authorize(principal, Action.READ, ...)``."""
    require_scope(principal, required_scope(kind, Action.READ))
    admin_of = frozenset(p for p, r in principal.roles.items() if r is Role.ADMIN)
    return ReadFilter(
        everything=principal.is_admin,
        user_id=principal.user_id,
        all_in=admin_of,
        shared_in=frozenset(principal.roles) - admin_of,
    )
