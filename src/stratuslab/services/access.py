"""Authorization, decided in one place for every route.

:data:`ROUTES` names the rule of every route of the API, keyed by method and path
template. ``api/deps.py`` applies it to every request that carries user credentials, right
after authentication and before the route's body runs; the services apply the same
:func:`~stratuslab.identity.authz.authorize` when they look a resource up, so a service
called from elsewhere is not weaker. The answers (docs/identity.md):

* 404 when the resource is hidden from the caller (exactly what a missing one gets);
* 403 when the caller sees it but may not do that (role, scope, or cloud admin only).

Rules:

* :data:`PUBLIC`: no credentials (health, API documents, marketplace reads, signed
  marketplace uploads, self-registration, password login);
* :data:`AGENT`: node agents with their per-host credential (``api/routes/agent.py``);
* :class:`Caller`: any authenticated user holding ``scope``; the service narrows what it
  shows to the caller (their tokens, their projects);
* :class:`CloudAdmin`: cloud administrators only;
* :class:`OnResource`: ``action`` on the resource named by the path parameter;
* :class:`InProject`: ``create`` of ``kind`` in the acting project.

``tests/integration/test_authz_matrix.py`` checks every route against this table, and
fails when a route of the app is missing from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, and_, false, or_, select, true
from sqlalchemy.orm import Session

from stratuslab.db.models import Image, Instance, Operation, Project
from stratuslab.errors import NotFound
from stratuslab.identity.authz import Action, Kind, ReadFilter, Visibility, authorize, read_filter
from stratuslab.identity.principal import Principal
from stratuslab.identity.scopes import require_scope
from stratuslab.types import ImageStatus, InstanceStatus

# -- rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Public:
    why: str


@dataclass(frozen=True)
class Agent:
    pass


@dataclass(frozen=True)
class Caller:
    """Any authenticated user with ``scope`` (None: no scope needed)."""

    scope: str | None = None


@dataclass(frozen=True)
class CloudAdmin:
    what: str


@dataclass(frozen=True)
class OnResource:
    kind: Kind
    action: Action
    param: str = "ref"


@dataclass(frozen=True)
class InProject:
    kind: Kind


@dataclass(frozen=True)
class AllOf:
    rules: tuple[Rule, ...]


Rule = Public | Agent | Caller | CloudAdmin | OnResource | InProject | AllOf

PUBLIC = Public("no credentials")
AGENT = Agent()
P = "/api/v1"
_I, _IMG, _PRJ = Kind.INSTANCE, Kind.IMAGE, Kind.PROJECT

ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", f"{P}/health"): PUBLIC,
    ("GET", f"{P}/openapi.json"): PUBLIC,
    ("GET", f"{P}/docs"): PUBLIC,
    # flavors
    ("GET", f"{P}/flavors"): Caller("compute:read"),
    ("POST", f"{P}/flavors"): CloudAdmin("creating a flavor"),
    ("DELETE", f"{P}/flavors/{{name}}"): CloudAdmin("deleting a flavor"),
    # images
    ("GET", f"{P}/images"): Caller("images:read"),
    ("POST", f"{P}/images"): InProject(_IMG),
    ("GET", f"{P}/images/{{ref}}"): OnResource(_IMG, Action.READ),
    ("GET", f"{P}/images/{{ref}}/metadata"): OnResource(_IMG, Action.READ),
    ("GET", f"{P}/images/{{ref}}/file"): OnResource(_IMG, Action.READ),
    ("DELETE", f"{P}/images/{{ref}}"): OnResource(_IMG, Action.DELETE),
    # instances
    ("GET", f"{P}/instances"): Caller("compute:read"),
    ("POST", f"{P}/instances"): InProject(_I),
    ("GET", f"{P}/instances/{{ref}}"): OnResource(_I, Action.READ),
    ("POST", f"{P}/instances/{{ref}}/actions"): OnResource(_I, Action.UPDATE),
    ("DELETE", f"{P}/instances/{{ref}}"): OnResource(_I, Action.DELETE),
    ("GET", f"{P}/instances/{{ref}}/console"): OnResource(_I, Action.READ),
    ("POST", f"{P}/instances/{{ref}}/save"): AllOf(
        (OnResource(_I, Action.UPDATE), InProject(_IMG))
    ),
    ("GET", f"{P}/operations/{{op_id}}"): OnResource(Kind.OPERATION, Action.READ, "op_id"),
    ("GET", f"{P}/events"): Caller("compute:read"),
    # infrastructure
    ("GET", f"{P}/hosts"): CloudAdmin("listing hosts"),
    ("GET", f"{P}/hosts/{{ref}}"): CloudAdmin("showing a host"),
    ("POST", f"{P}/hosts/tokens"): CloudAdmin("creating a host join token"),
    ("POST", f"{P}/hosts/{{ref}}/state"): CloudAdmin("enabling, disabling or draining a host"),
    ("PATCH", f"{P}/hosts/{{ref}}"): CloudAdmin("changing a host"),
    ("DELETE", f"{P}/hosts/{{ref}}"): CloudAdmin("removing a host"),
    ("POST", f"{P}/instances/{{ref}}/migrate"): CloudAdmin("migrating an instance"),
    # identity
    ("POST", f"{P}/auth/tokens"): Public("password login; with credentials: a new token"),
    ("GET", f"{P}/auth/tokens"): Caller(),
    ("DELETE", f"{P}/auth/tokens/{{token_id}}"): Caller(),
    ("GET", f"{P}/auth/whoami"): Caller(),
    ("GET", f"{P}/projects"): Caller("projects:read"),
    ("POST", f"{P}/projects"): CloudAdmin("creating a project"),
    ("GET", f"{P}/projects/{{ref}}"): OnResource(_PRJ, Action.READ),
    ("PATCH", f"{P}/projects/{{ref}}"): OnResource(_PRJ, Action.MANAGE),
    ("DELETE", f"{P}/projects/{{ref}}"): CloudAdmin("deleting a project"),
    ("GET", f"{P}/projects/{{ref}}/members"): OnResource(_PRJ, Action.READ),
    ("PUT", f"{P}/projects/{{ref}}/members/{{user}}"): OnResource(_PRJ, Action.MANAGE),
    ("DELETE", f"{P}/projects/{{ref}}/members/{{user}}"): OnResource(_PRJ, Action.MANAGE),
    ("GET", f"{P}/users"): CloudAdmin("listing users"),
    ("POST", f"{P}/users"): CloudAdmin("creating a user"),
    ("GET", f"{P}/users/{{ref}}"): Caller(),
    ("PATCH", f"{P}/users/{{ref}}"): Caller(),
    ("DELETE", f"{P}/users/{{ref}}"): CloudAdmin("deleting a user"),
    ("GET", f"{P}/users/{{ref}}/identities"): Caller(),
    ("POST", f"{P}/users/{{ref}}/identities"): CloudAdmin("linking an identity"),
    ("DELETE", f"{P}/users/{{ref}}/identities/{{identity_id}}"): CloudAdmin(
        "unlinking an identity"
    ),
    ("GET", f"{P}/quotas/projects/{{ref}}"): OnResource(_PRJ, Action.READ),
    ("PUT", f"{P}/quotas/projects/{{ref}}"): CloudAdmin("setting a project quota"),
    ("GET", f"{P}/quotas/users/{{ref}}"): Caller(),
    ("PUT", f"{P}/quotas/users/{{ref}}"): CloudAdmin("setting a user quota"),
    ("GET", f"{P}/usage"): Caller("usage:read"),
    ("GET", f"{P}/audit"): CloudAdmin("reading the audit log"),
    ("POST", f"{P}/register"): Public("self-registration (when enabled)"),
    ("GET", f"{P}/register/verify"): Public("the e-mailed verification link"),
    ("GET", f"{P}/registrations"): CloudAdmin("listing registrations"),
    ("POST", f"{P}/registrations/{{reg_id}}/approve"): CloudAdmin("approving a registration"),
    ("POST", f"{P}/registrations/{{reg_id}}/reject"): CloudAdmin("rejecting a registration"),
    # networks (services/networks.py, secgroups.py and nics.py check each resource)
    ("GET", f"{P}/networks"): Caller("network:read"),
    ("POST", f"{P}/networks"): InProject(Kind.ADDRESS),
    ("GET", f"{P}/networks/{{ref}}"): Caller("network:read"),
    ("DELETE", f"{P}/networks/{{ref}}"): Caller("network:write"),
    ("GET", f"{P}/networks/{{ref}}/leases"): Caller("network:read"),
    ("GET", f"{P}/instances/{{ref}}/nics"): OnResource(_I, Action.READ),
    ("POST", f"{P}/instances/{{ref}}/nics"): OnResource(_I, Action.UPDATE),
    ("DELETE", f"{P}/instances/{{ref}}/nics/{{nic}}"): OnResource(_I, Action.UPDATE),
    ("GET", f"{P}/instances/{{ref}}/port-forwards"): OnResource(_I, Action.READ),
    ("POST", f"{P}/instances/{{ref}}/port-forwards"): OnResource(_I, Action.UPDATE),
    ("DELETE", f"{P}/instances/{{ref}}/port-forwards/{{forward}}"): OnResource(_I, Action.UPDATE),
    ("GET", f"{P}/security-groups"): Caller("network:read"),
    ("POST", f"{P}/security-groups"): InProject(Kind.ADDRESS),
    ("GET", f"{P}/security-groups/{{ref}}"): Caller("network:read"),
    ("DELETE", f"{P}/security-groups/{{ref}}"): Caller("network:write"),
    ("POST", f"{P}/security-groups/{{ref}}/rules"): Caller("network:write"),
    ("DELETE", f"{P}/security-groups/{{ref}}/rules/{{rule_id}}"): Caller("network:write"),
    # volumes: the services authorize each volume and instance (services/volumes.py)
    ("GET", f"{P}/volumes"): Caller("volumes:read"),
    ("POST", f"{P}/volumes"): InProject(Kind.VOLUME),
    ("GET", f"{P}/volumes/{{ref}}"): Caller("volumes:read"),
    ("PATCH", f"{P}/volumes/{{ref}}"): Caller("volumes:write"),
    ("DELETE", f"{P}/volumes/{{ref}}"): Caller("volumes:write"),
    ("POST", f"{P}/volumes/{{ref}}/attach"): Caller("volumes:write"),
    ("POST", f"{P}/volumes/{{ref}}/detach"): Caller("volumes:write"),
    ("POST", f"{P}/volumes/{{ref}}/snapshot"): Caller("volumes:write"),
    ("POST", f"{P}/volumes/{{ref}}/clone"): Caller("volumes:write"),
    ("POST", f"{P}/volumes/{{ref}}/grow"): Caller("volumes:write"),
    ("GET", f"{P}/volumes/quarantine"): CloudAdmin("listing the quarantine"),
    ("POST", f"{P}/volumes/quarantine/{{volume_id}}/release"): CloudAdmin(
        "releasing a volume from quarantine"
    ),
    ("DELETE", f"{P}/volumes/quarantine/{{volume_id}}"): CloudAdmin("purging a volume"),
    # node agents (per-host credentials)
    ("POST", f"{P}/agent/join"): AGENT,
    ("POST", f"{P}/agent/heartbeat"): AGENT,
    ("GET", f"{P}/agent/desired"): AGENT,
    ("POST", f"{P}/agent/report"): AGENT,
    ("GET", f"{P}/agent/images/{{image_id}}"): AGENT,
    ("PUT", f"{P}/agent/images/{{image_id}}/file"): AGENT,
    ("POST", f"{P}/agent/images/{{image_id}}/failure"): AGENT,
    # marketplace: anyone reads; uploads are authenticated by their signature
    ("POST", f"{P}/marketplace/entries"): Public("signed upload"),
    ("GET", f"{P}/marketplace/entries"): PUBLIC,
    ("GET", f"{P}/marketplace/feed"): PUBLIC,
    ("GET", f"{P}/marketplace/images/{{identifier}}"): PUBLIC,
    ("GET", f"{P}/marketplace/images/{{identifier}}/endorsers/{{endorser}}"): PUBLIC,
    ("GET", f"{P}/marketplace/entries/{{entry_id}}"): PUBLIC,
    ("GET", f"{P}/marketplace/entries/{{entry_id}}/signed"): PUBLIC,
    ("GET", f"{P}/marketplace/entries/{{entry_id}}/metadata.json"): PUBLIC,
    ("GET", f"{P}/marketplace/entries/{{entry_id}}/signature.p7s"): PUBLIC,
    ("GET", f"{P}/marketplace/endorsers"): PUBLIC,
    ("GET", f"{P}/marketplace/tags/{{endorser}}/{{tag}}"): PUBLIC,
}


def rule_for(method: str, path: str) -> Rule | None:
    return ROUTES.get((method, path.replace(":path}", "}")))


def check_route(
    session: Session, principal: Principal, method: str, path: str, params: Mapping[str, Any]
) -> None:
    """Apply the route's rule to an authenticated caller (NotFound or Forbidden)."""
    rule = rule_for(method, path)
    if rule is not None:
        _apply(session, principal, rule, params)


def _apply(session: Session, principal: Principal, rule: Rule, params: Mapping[str, Any]) -> None:
    if isinstance(rule, AllOf):
        for part in rule.rules:
            _apply(session, principal, part, params)
    elif isinstance(rule, Caller):
        if rule.scope is not None:
            require_scope(principal, rule.scope)
    elif isinstance(rule, CloudAdmin):
        principal.require_admin(rule.what)
    elif isinstance(rule, InProject):
        authorize_create(principal, rule.kind)
    elif isinstance(rule, OnResource):
        ref = str(params.get(rule.param, ""))
        find(_LOOKUPS[rule.kind], session, principal, ref, rule.action)


def authorize_create(principal: Principal, kind: Kind, project_id: str | None = None) -> None:
    target = project_id or principal.project_id
    authorize(
        principal,
        Action.CREATE,
        kind=kind,
        resource_owner_project=target,
        resource_visibility=Visibility.PROJECT,
        resource_owner_user=principal.user_id,
        ref=target,
    )


# -- lists ------------------------------------------------------------------------------


def visible_clause(
    flt: ReadFilter,
    project: Any,
    owner: Any,
    visibility: Any | None = None,
) -> ColumnElement[bool]:
    """The WHERE clause of :class:`ReadFilter` (``visibility`` None: always ``project``)."""
    if flt.everything:
        return true()
    conds: list[ColumnElement[bool]] = []
    if visibility is not None:
        conds.append(visibility == Visibility.PUBLIC.value)
    if flt.all_in:
        conds.append(project.in_(sorted(flt.all_in)))
    if flt.shared_in:
        shared = project.in_(sorted(flt.shared_in))
        if visibility is None:
            conds.append(shared)
        else:
            conds.append(
                and_(shared, or_(visibility == Visibility.PROJECT.value, owner == flt.user_id))
            )
    return or_(*conds) if conds else false()


def instances_visible(principal: Principal) -> ColumnElement[bool]:
    flt = read_filter(principal, Kind.INSTANCE)
    return visible_clause(flt, Instance.project_id, Instance.owner_id)


def images_visible(principal: Principal) -> ColumnElement[bool]:
    flt = read_filter(principal, Kind.IMAGE)
    return and_(
        Image.status != ImageStatus.DELETED.value,
        visible_clause(flt, Image.project_id, Image.owner_id, Image.visibility),
    )


def projects_visible(principal: Principal) -> ColumnElement[bool]:
    flt = read_filter(principal, Kind.PROJECT)
    if flt.everything:
        return true()
    return Project.id.in_(sorted(principal.roles)) if principal.roles else false()


# -- one resource -----------------------------------------------------------------------

R = TypeVar("R")


@dataclass(frozen=True)
class Owner:
    """Whose a resource is, as :func:`authorize` needs it."""

    project: str
    visibility: Visibility
    user: str


@dataclass(frozen=True)
class Lookup(Generic[R]):
    """How one kind of resource is found by id or name, and whose it is.

    ``by_id`` is the WHERE clause of the lookup by id (None: the primary key, through the
    session); ``name`` the name column, looked up among what ``visible`` lets the caller see
    (the acting project's first, then the oldest; None: by id only); ``list_command`` the
    command a NotFound hints at.
    """

    kind: Kind
    model: type[R]
    owner: Callable[[R], Owner]
    list_command: str
    by_id: Callable[[str], ColumnElement[bool]] | None = None
    name: Any = None
    visible: Callable[[Principal], Sequence[ColumnElement[bool]]] = lambda _: ()
    project: Any = None
    created: Any = None


def find(
    lookup: Lookup[R],
    session: Session,
    principal: Principal,
    ref: str,
    action: Action = Action.READ,
) -> R:
    """A ``lookup.kind`` by id or name that ``principal`` may ``action``; NotFound when it
    is missing or hidden (the kind's ``*_not_found``), Forbidden when it is visible but the
    action is not allowed."""
    if lookup.by_id is None:
        row = session.get(lookup.model, ref)
    else:
        row = session.scalar(select(lookup.model).where(lookup.by_id(ref)))
    if row is None and lookup.name is not None:
        row = session.scalar(
            select(lookup.model)
            .where(lookup.name == ref, *lookup.visible(principal))
            .order_by(lookup.project != principal.project_id, lookup.created)
            .limit(1)
        )
    if row is None:
        raise _missing(lookup, ref)
    _authorize(principal, action, lookup, row, ref)
    return row


def visibility_of(value: str) -> Visibility:
    """A stored visibility; unknown values are the most restrictive."""
    try:
        return Visibility(value)
    except ValueError:
        return Visibility.PRIVATE


INSTANCES = Lookup(
    Kind.INSTANCE,
    Instance,
    lambda inst: Owner(inst.project_id, Visibility.PROJECT, inst.owner_id),
    "list",
    name=Instance.name,
    visible=lambda principal: (
        Instance.status != InstanceStatus.DELETED.value,
        instances_visible(principal),
    ),
    project=Instance.project_id,
    created=Instance.created_at,
)
IMAGES = Lookup(
    Kind.IMAGE,
    Image,
    lambda image: Owner(image.project_id, visibility_of(image.visibility), image.owner_id),
    "image list",
    by_id=lambda ref: and_(Image.id == ref, Image.status != ImageStatus.DELETED.value),
    name=Image.name,
    visible=lambda principal: (images_visible(principal),),
    project=Image.project_id,
    created=Image.created_at,
)
OPERATIONS = Lookup(
    Kind.OPERATION,
    Operation,
    lambda op: Owner(op.project_id, Visibility.PROJECT, op.owner_id),
    "list",
)
PROJECTS = Lookup(
    Kind.PROJECT,
    Project,
    lambda project: Owner(project.id, Visibility.PROJECT, ""),
    "project list",
    by_id=lambda ref: (Project.id == ref) | (Project.name == ref),
)
_LOOKUPS: dict[Kind, Lookup[Any]] = {
    lookup.kind: lookup for lookup in (INSTANCES, IMAGES, OPERATIONS, PROJECTS)
}


def find_instance(
    session: Session, principal: Principal, ref: str, action: Action = Action.READ
) -> Instance:
    """An instance by id or name that ``principal`` may ``action``; NotFound / Forbidden."""
    return find(INSTANCES, session, principal, ref, action)


def find_image(
    session: Session, principal: Principal, ref: str, action: Action = Action.READ
) -> Image:
    return find(IMAGES, session, principal, ref, action)


def find_operation(
    session: Session, principal: Principal, ref: str, action: Action = Action.READ
) -> Operation:
    return find(OPERATIONS, session, principal, ref, action)


def find_project(
    session: Session, principal: Principal, ref: str, action: Action = Action.READ
) -> Project:
    return find(PROJECTS, session, principal, ref, action)


def _authorize(principal: Principal, action: Action, lookup: Lookup[R], row: R, ref: str) -> None:
    """:func:`authorize`, with a hidden resource answered exactly like a missing one."""
    owner = lookup.owner(row)
    try:
        authorize(
            principal,
            action,
            kind=lookup.kind,
            resource_owner_project=owner.project,
            resource_visibility=owner.visibility,
            resource_owner_user=owner.user,
            ref=ref,
        )
    except NotFound:
        raise _missing(lookup, ref) from None


def _missing(lookup: Lookup[Any], ref: str) -> NotFound:
    kind = lookup.kind.value
    return NotFound(
        f"{kind} {ref!r} does not exist",
        hint=f"list what you can see with `stratus {lookup.list_command}`",
        code=f"{kind}_not_found",
    )


def check_visibility_change(principal: Principal, image: Image, visibility: str) -> Visibility:
    """May ``principal`` give ``image`` this visibility? ``public`` needs the project's admin
    role (everyone on the cloud will see it); the others what ``update`` needs."""
    new = Visibility(visibility)
    action = Action.MANAGE if new is Visibility.PUBLIC else Action.UPDATE
    _authorize(principal, action, IMAGES, image, image.name)
    return new
