"""The authorization table, checked cell by cell: every (acting role, same project?, owner?)
x (visibility) x (action) has exactly one expected outcome.

``.`` allowed, ``4`` NotFound (the resource is invisible: other projects' private and
project resources, others' private resources), ``3`` Forbidden (visible, not allowed).
For rows with "same = no" the role is the one held in the caller's own project; the
resource lives in a project where the caller has no role.
"""

from __future__ import annotations

import itertools

import pytest

from stratuslab.errors import Forbidden, NotFound
from stratuslab.identity import Action, Kind, Principal, Visibility, authorize, read_filter
from stratuslab.identity.authz import required_scope
from stratuslab.types import Role

MATRIX = """
# role   same  owner | private       | project       | public
#                    | r u c w d m   | r u c w d m   | r u c w d m
admin    yes   yes   | . . . . . .   | . . . . . .   | . . . . . .
admin    yes   no    | . . . . . .   | . . . . . .   | . . . . . .
member   yes   yes   | . . . . . 3   | . . . . . 3   | . . . . . 3
member   yes   no    | 4 4 . 4 4 4   | . . . 3 3 3   | . . . 3 3 3
reader   yes   yes   | . 3 3 3 3 3   | . 3 3 3 3 3   | . 3 3 3 3 3
reader   yes   no    | 4 4 3 4 4 4   | . 3 3 3 3 3   | . 3 3 3 3 3
admin    no    yes   | 4 4 4 4 4 4   | 4 4 4 4 4 4   | . . 4 3 3 3
admin    no    no    | 4 4 4 4 4 4   | 4 4 4 4 4 4   | . . 4 3 3 3
member   no    yes   | 4 4 4 4 4 4   | 4 4 4 4 4 4   | . . 4 3 3 3
member   no    no    | 4 4 4 4 4 4   | 4 4 4 4 4 4   | . . 4 3 3 3
reader   no    yes   | 4 4 4 4 4 4   | 4 4 4 4 4 4   | . 3 4 3 3 3
reader   no    no    | 4 4 4 4 4 4   | 4 4 4 4 4 4   | . 3 4 3 3 3
"""
ACTIONS = [Action.READ, Action.USE, Action.CREATE, Action.UPDATE, Action.DELETE, Action.MANAGE]
VISIBILITIES = [Visibility.PRIVATE, Visibility.PROJECT, Visibility.PUBLIC]
OUTCOMES = {".": None, "4": NotFound, "3": Forbidden}

Case = tuple[Role, bool, bool, Visibility, Action]


def parse_matrix() -> dict[Case, type[Exception] | None]:
    cells: dict[Case, type[Exception] | None] = {}
    for line in MATRIX.strip().splitlines():
        if line.startswith("#"):
            continue
        head, *groups = line.split("|")
        role, same, owner = head.split()
        for visibility, group in zip(VISIBILITIES, groups, strict=True):
            for action, mark in zip(ACTIONS, group.split(), strict=True):
                key = (Role(role), same == "yes", owner == "yes", visibility, action)
                assert key not in cells, f"duplicate row {key}"
                cells[key] = OUTCOMES[mark]
    return cells


EXPECTED = parse_matrix()


def test_the_table_covers_every_combination() -> None:
    every = set(itertools.product(Role, [True, False], [True, False], VISIBILITIES, ACTIONS))
    assert set(EXPECTED) == every


def principal_for(role: Role, same: bool, **extra: object) -> Principal:
    own = "p-res" if same else "p-own"
    return Principal(user_id="u-me", project_id=own, roles={own: role}, **extra)  # type: ignore[arg-type]


def outcome(
    principal: Principal,
    visibility: Visibility,
    action: Action,
    owner: bool,
    *,
    kind: Kind = Kind.IMAGE,
) -> type[Exception] | None:
    try:
        authorize(
            principal,
            action,
            kind=kind,
            resource_owner_project="p-res",
            resource_visibility=visibility,
            resource_owner_user="u-me" if owner else "u-other",
            ref="img",
        )
    except (NotFound, Forbidden) as exc:
        return type(exc)
    return None


@pytest.mark.parametrize(("case", "expected"), sorted(EXPECTED.items(), key=str), ids=str)
def test_matrix_cell(case: Case, expected: type[Exception] | None) -> None:
    role, same, owner, visibility, action = case
    assert outcome(principal_for(role, same), visibility, action, owner) is expected


@pytest.mark.parametrize("case", sorted(EXPECTED, key=str), ids=str)
def test_cloud_admin_may_do_everything(case: Case) -> None:
    role, same, owner, visibility, action = case
    admin = principal_for(role, same, cloud_admin=True)
    assert outcome(admin, visibility, action, owner) is None


def test_cloud_admin_with_a_scoped_token_is_an_ordinary_user() -> None:
    admin = principal_for(Role.MEMBER, False, cloud_admin=True, scopes=frozenset({"images:write"}))
    assert not admin.is_admin
    assert outcome(admin, Visibility.PRIVATE, Action.READ, False) is NotFound
    assert outcome(admin, Visibility.PUBLIC, Action.DELETE, False) is Forbidden


def test_not_found_reads_like_a_missing_resource() -> None:
    with pytest.raises(NotFound) as err:
        authorize(
            principal_for(Role.MEMBER, False),
            Action.READ,
            kind=Kind.INSTANCE,
            resource_owner_project="p-res",
            resource_visibility=Visibility.PROJECT,
            resource_owner_user="u-other",
            ref="web-1",
        )
    assert err.value.message == "instance 'web-1' does not exist"
    assert err.value.code == "instance_not_found"
    assert "p-res" not in str(err.value)


def test_create_in_a_foreign_project_hides_the_project() -> None:
    with pytest.raises(NotFound) as err:
        authorize(
            principal_for(Role.ADMIN, False),
            Action.CREATE,
            kind=Kind.INSTANCE,
            resource_owner_project="p-res",
            resource_visibility=Visibility.PROJECT,
            resource_owner_user="u-me",
        )
    assert err.value.code == "project_not_found"


def test_forbidden_says_why() -> None:
    with pytest.raises(Forbidden) as err:
        authorize(
            principal_for(Role.READER, True),
            Action.DELETE,
            kind=Kind.VOLUME,
            resource_owner_project="p-res",
            resource_visibility=Visibility.PROJECT,
            resource_owner_user="u-me",
        )
    assert "may not delete this volume" in err.value.message
    assert "read-only" in err.value.message


@pytest.mark.parametrize(
    ("scopes", "action", "expected"),
    [
        ({"compute:read"}, Action.READ, None),
        ({"compute:read"}, Action.DELETE, Forbidden),
        ({"compute:write"}, Action.DELETE, None),
        ({"images:write"}, Action.READ, Forbidden),
        ({"admin"}, Action.DELETE, None),
    ],
)
def test_scopes_narrow_what_roles_allow(
    scopes: set[str], action: Action, expected: type[Exception] | None
) -> None:
    principal = principal_for(Role.ADMIN, True, scopes=frozenset(scopes))
    assert outcome(principal, Visibility.PROJECT, action, True, kind=Kind.INSTANCE) is expected


def test_a_missing_scope_is_named() -> None:
    principal = principal_for(Role.ADMIN, True, scopes=frozenset({"compute:read"}))
    with pytest.raises(Forbidden) as err:
        authorize(
            principal,
            Action.DELETE,
            kind=Kind.INSTANCE,
            resource_owner_project="p-res",
            resource_visibility=Visibility.PROJECT,
            resource_owner_user="u-me",
        )
    assert err.value.code == "missing_scope"
    assert "'compute:write'" in err.value.message


def test_an_invisible_resource_is_not_found_even_without_the_scope() -> None:
    principal = principal_for(Role.MEMBER, False, scopes=frozenset({"images:read"}))
    assert outcome(principal, Visibility.PRIVATE, Action.DELETE, False) is NotFound


def test_required_scopes() -> None:
    assert required_scope(Kind.INSTANCE, Action.READ) == "compute:read"
    assert required_scope(Kind.IMAGE, Action.USE) == "images:read"
    assert required_scope(Kind.VOLUME, Action.CREATE) == "volumes:write"
    assert required_scope(Kind.PROJECT, Action.MANAGE) == "projects:write"


PRINCIPALS = [
    Principal("u-me", "p-a", roles={"p-a": Role.MEMBER, "p-b": Role.ADMIN}),
    Principal("u-me", "p-a", roles={"p-a": Role.READER}),
    Principal("u-me", "p-c", roles={"p-c": Role.MEMBER}),
    Principal("u-me", "p-a", roles={}, cloud_admin=True),
]


@pytest.mark.parametrize("principal", PRINCIPALS, ids=str)
def test_read_filter_agrees_with_authorize(principal: Principal) -> None:
    rows = read_filter(principal, Kind.IMAGE)
    for project, visibility, owner in itertools.product(
        ["p-a", "p-b", "p-c"], VISIBILITIES, ["u-me", "u-other"]
    ):
        listed = rows.allows(project, visibility, owner)
        try:
            authorize(
                principal,
                Action.READ,
                kind=Kind.IMAGE,
                resource_owner_project=project,
                resource_visibility=visibility,
                resource_owner_user=owner,
            )
            allowed = True
        except NotFound:
            allowed = False
        assert listed == allowed, (project, visibility, owner)


def test_read_filter_needs_the_read_scope() -> None:
    principal = Principal("u", "p", roles={"p": Role.MEMBER}, scopes=frozenset({"compute:read"}))
    with pytest.raises(Forbidden):
        read_filter(principal, Kind.IMAGE)
