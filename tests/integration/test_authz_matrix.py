"""Every endpoint against every kind of caller: hidden resources are 404, visible but
forbidden actions are 403, missing credentials are 401.

``ROUTES`` below lists every route of the app with the request the matrix sends and what
kind of check it must make (written here independently of services/access.py). The
meta-tests fail when the app has a route that this table (or services/access.py) lacks.

The world: project ``physics`` holds an image and instances owned by olga (member), with
pete (another member), rita (reader) and paul (project admin); otto is a member of
``chemistry`` only; ``admin`` is the cloud administrator; ``anonymous`` sends nothing.
Denied callers go first, so a route that changes something runs for them before it runs
for someone allowed to change it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Route

from stratuslab.db.models import Host, Project, ProjectMember, User, utcnow
from stratuslab.identity.quotas import UNLIMITED
from stratuslab.services import access, auth, projects, quotas
from stratuslab.services.context import Ctx
from stratuslab.types import Role
from tests.conftest import make_qcow2

PERSONAS = ("anonymous", "otto", "rita", "pete", "olga", "paul", "admin")
P = "/api/v1"


@dataclass
class Call:
    """What the matrix sends for one route, and the check the route must make.

    ``check``: ``public`` (no credentials needed), ``agent`` (host credentials only),
    ``cloud-admin``, ``any`` (any authenticated caller), ``self`` (a cloud admin, or the
    owner of the target: victim's things, so everyone else gets 404), ``read``, ``update``,
    ``delete``, ``manage`` (on physics' resource), ``create`` (in the acting project).
    """

    check: str
    path: str = ""
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None
    #: the 404 code that means "hidden" for this route
    hidden: str = ""


JOIN = {
    "token": "not-a-join-token",
    "capacity": {
        "hostname": "h",
        "arch": "x86_64",
        "vcpus": 1,
        "memory_mib": 1,
        "disk_gib": 1,
        "hypervisor": "qemu",
    },
}
ROUTES: dict[tuple[str, str], Call] = {
    ("GET", "/health"): Call("public"),
    ("GET", "/openapi.json"): Call("public"),
    ("GET", "/docs"): Call("public"),
    ("GET", "/flavors"): Call("any"),
    ("POST", "/flavors"): Call(
        "cloud-admin", json={"name": "m1.small", "vcpus": 1, "memory_mib": 128}
    ),
    ("DELETE", "/flavors/{name}"): Call("cloud-admin", path="/flavors/m1.small"),
    ("GET", "/images"): Call("any"),
    ("POST", "/images"): Call("create", params={"name": "new-image"}, content=b""),
    ("GET", "/images/{ref}"): Call("read", path="/images/{image}", hidden="image_not_found"),
    ("GET", "/images/{ref}/metadata"): Call(
        "read", path="/images/{image}/metadata", hidden="image_not_found"
    ),
    ("GET", "/images/{ref}/file"): Call(
        "read", path="/images/{image}/file", hidden="image_not_found"
    ),
    ("DELETE", "/images/{ref}"): Call("delete", path="/images/{image}", hidden="image_not_found"),
    ("GET", "/instances"): Call("any"),
    ("POST", "/instances"): Call("create", json={"image": "no-such-image"}),
    ("GET", "/instances/{ref}"): Call("read", path="/instances/{vm}", hidden="instance_not_found"),
    ("POST", "/instances/{ref}/actions"): Call(
        "update",
        path="/instances/{vm}/actions",
        json={"action": "reboot"},
        hidden="instance_not_found",
    ),
    ("GET", "/instances/{ref}/console"): Call(
        "read", path="/instances/{vm}/console", hidden="instance_not_found"
    ),
    ("POST", "/instances/{ref}/save"): Call(
        "update", path="/instances/{vm}/save", json={"name": "saved"}, hidden="instance_not_found"
    ),
    ("DELETE", "/instances/{ref}"): Call(
        "delete", path="/instances/{vm}", hidden="instance_not_found"
    ),
    ("GET", "/operations/{op_id}"): Call(
        "read", path="/operations/{op}", hidden="operation_not_found"
    ),
    ("GET", "/events"): Call("any"),
    ("GET", "/hosts"): Call("cloud-admin"),
    ("GET", "/hosts/{ref}"): Call("cloud-admin", path="/hosts/node-1"),
    ("POST", "/hosts/tokens"): Call("cloud-admin"),
    ("POST", "/hosts/{ref}/state"): Call(
        "cloud-admin", path="/hosts/node-1/state", json={"action": "disable"}
    ),
    ("PATCH", "/hosts/{ref}"): Call(
        "cloud-admin", path="/hosts/node-1", json={"labels": {"a": "b"}}
    ),
    ("DELETE", "/hosts/{ref}"): Call("cloud-admin", path="/hosts/no-such-host"),
    ("POST", "/instances/{ref}/migrate"): Call(
        "cloud-admin", path="/instances/{vm}/migrate", json={}
    ),
    ("POST", "/auth/tokens"): Call("any", json={}),
    ("GET", "/auth/tokens"): Call("any"),
    ("DELETE", "/auth/tokens/{token_id}"): Call(
        "self", path="/auth/tokens/{victim_token}", hidden="token_not_found"
    ),
    ("GET", "/auth/whoami"): Call("any"),
    ("GET", "/projects"): Call("any"),
    ("POST", "/projects"): Call("cloud-admin", json={"name": "physics"}),
    ("GET", "/projects/{ref}"): Call("read", path="/projects/physics", hidden="project_not_found"),
    ("PATCH", "/projects/{ref}"): Call(
        "manage", path="/projects/physics", json={}, hidden="project_not_found"
    ),
    ("DELETE", "/projects/{ref}"): Call("cloud-admin", path="/projects/physics"),
    ("GET", "/projects/{ref}/members"): Call(
        "read", path="/projects/physics/members", hidden="project_not_found"
    ),
    ("PUT", "/projects/{ref}/members/{user}"): Call(
        "manage",
        path="/projects/physics/members/pete",
        json={"role": "member"},
        hidden="project_not_found",
    ),
    ("DELETE", "/projects/{ref}/members/{user}"): Call(
        "manage", path="/projects/physics/members/dan", hidden="project_not_found"
    ),
    ("GET", "/users"): Call("cloud-admin"),
    ("POST", "/users"): Call("cloud-admin", json={"name": "olga"}),
    ("GET", "/users/{ref}"): Call("self", path="/users/victim", hidden="user_not_found"),
    ("PATCH", "/users/{ref}"): Call("self", path="/users/victim", json={}, hidden="user_not_found"),
    ("DELETE", "/users/{ref}"): Call("cloud-admin", path="/users/victim"),
    ("GET", "/users/{ref}/identities"): Call(
        "self", path="/users/victim/identities", hidden="user_not_found"
    ),
    ("POST", "/users/{ref}/identities"): Call(
        "cloud-admin", path="/users/victim/identities", json={"kind": "x509", "subject": "/CN=v"}
    ),
    ("DELETE", "/users/{ref}/identities/{identity_id}"): Call(
        "cloud-admin", path="/users/victim/identities/nope"
    ),
    ("GET", "/quotas/projects/{ref}"): Call(
        "read", path="/quotas/projects/physics", hidden="project_not_found"
    ),
    ("PUT", "/quotas/projects/{ref}"): Call(
        "cloud-admin", path="/quotas/projects/physics", json={}
    ),
    ("GET", "/quotas/users/{ref}"): Call(
        "self", path="/quotas/users/victim", hidden="user_not_found"
    ),
    ("PUT", "/quotas/users/{ref}"): Call("cloud-admin", path="/quotas/users/victim", json={}),
    ("GET", "/usage"): Call("any"),
    ("GET", "/audit"): Call("cloud-admin"),
    ("POST", "/register"): Call(
        "public", json={"username": "newbie", "email": "n@example.org", "password": "long enough"}
    ),
    ("GET", "/register/verify"): Call("public", params={"token": "nope"}),
    ("GET", "/registrations"): Call("cloud-admin"),
    ("POST", "/registrations/{reg_id}/approve"): Call(
        "cloud-admin", path="/registrations/nope/approve", json={}
    ),
    ("POST", "/registrations/{reg_id}/reject"): Call(
        "cloud-admin", path="/registrations/nope/reject", json={}
    ),
    # networks (each service hides other projects' networks and groups itself)
    ("GET", "/networks"): Call("any"),
    ("POST", "/networks"): Call("create", json={"name": "net", "cidr4": "198.18.0.0/24"}),
    ("GET", "/networks/{ref}"): Call("any", path="/networks/nope"),
    ("DELETE", "/networks/{ref}"): Call("any", path="/networks/nope"),
    ("GET", "/networks/{ref}/leases"): Call("any", path="/networks/nope/leases"),
    ("GET", "/instances/{ref}/nics"): Call(
        "read", path="/instances/{vm}/nics", hidden="instance_not_found"
    ),
    ("POST", "/instances/{ref}/nics"): Call(
        "update", path="/instances/{vm}/nics", json={"network": "nope"}, hidden="instance_not_found"
    ),
    ("DELETE", "/instances/{ref}/nics/{nic}"): Call(
        "update", path="/instances/{vm}/nics/7", hidden="instance_not_found"
    ),
    ("GET", "/instances/{ref}/port-forwards"): Call(
        "read", path="/instances/{vm}/port-forwards", hidden="instance_not_found"
    ),
    ("POST", "/instances/{ref}/port-forwards"): Call(
        "update",
        path="/instances/{vm}/port-forwards",
        json={"port": 22},
        hidden="instance_not_found",
    ),
    ("DELETE", "/instances/{ref}/port-forwards/{forward}"): Call(
        "update", path="/instances/{vm}/port-forwards/1", hidden="instance_not_found"
    ),
    ("GET", "/security-groups"): Call("any"),
    ("POST", "/security-groups"): Call("create", json={"name": "web"}),
    ("GET", "/security-groups/{ref}"): Call("any", path="/security-groups/default"),
    ("DELETE", "/security-groups/{ref}"): Call("any", path="/security-groups/nope"),
    ("POST", "/security-groups/{ref}/rules"): Call(
        "any", path="/security-groups/nope/rules", json={"direction": "ingress"}
    ),
    ("DELETE", "/security-groups/{ref}/rules/{rule_id}"): Call(
        "any", path="/security-groups/nope/rules/nope"
    ),
    ("GET", "/volumes"): Call("any"),
    ("POST", "/volumes"): Call("create", json={"name": "v", "size_gib": 1}),
    ("GET", "/volumes/{ref}"): Call("any", path="/volumes/nope"),
    ("PATCH", "/volumes/{ref}"): Call("any", path="/volumes/nope", json={}),
    ("DELETE", "/volumes/{ref}"): Call("any", path="/volumes/nope"),
    ("POST", "/volumes/{ref}/attach"): Call(
        "any", path="/volumes/nope/attach", json={"instance": "x"}
    ),
    ("POST", "/volumes/{ref}/detach"): Call("any", path="/volumes/nope/detach", json={}),
    ("POST", "/volumes/{ref}/snapshot"): Call(
        "any", path="/volumes/nope/snapshot", json={"name": "s"}
    ),
    ("POST", "/volumes/{ref}/clone"): Call("any", path="/volumes/nope/clone", json={"name": "c"}),
    ("POST", "/volumes/{ref}/grow"): Call("any", path="/volumes/nope/grow", json={"size_gib": 2}),
    ("GET", "/volumes/quarantine"): Call("cloud-admin"),
    ("POST", "/volumes/quarantine/{volume_id}/release"): Call(
        "cloud-admin", path="/volumes/quarantine/nope/release"
    ),
    ("DELETE", "/volumes/quarantine/{volume_id}"): Call(
        "cloud-admin", path="/volumes/quarantine/nope"
    ),
    ("POST", "/agent/join"): Call("agent", json=JOIN),
    ("POST", "/agent/heartbeat"): Call("agent", json={}),
    ("GET", "/agent/desired"): Call("agent"),
    ("POST", "/agent/report"): Call("agent", json={}),
    ("GET", "/agent/images/{image_id}"): Call("agent", path="/agent/images/{image}"),
    ("PUT", "/agent/images/{image_id}/file"): Call("agent", path="/agent/images/{image}/file"),
    ("POST", "/agent/images/{image_id}/failure"): Call(
        "agent", path="/agent/images/{image}/failure", json={"reason": "x"}
    ),
    ("POST", "/marketplace/entries"): Call("public", json={}),
    ("GET", "/marketplace/entries"): Call("public"),
    ("GET", "/marketplace/feed"): Call("public"),
    ("GET", "/marketplace/images/{identifier}"): Call("public", path="/marketplace/images/x"),
    ("GET", "/marketplace/images/{identifier}/endorsers/{endorser}"): Call(
        "public", path="/marketplace/images/x/endorsers/y"
    ),
    ("GET", "/marketplace/entries/{entry_id}"): Call("public", path="/marketplace/entries/x"),
    ("GET", "/marketplace/entries/{entry_id}/signed"): Call(
        "public", path="/marketplace/entries/x/signed"
    ),
    ("GET", "/marketplace/entries/{entry_id}/metadata.json"): Call(
        "public", path="/marketplace/entries/x/metadata.json"
    ),
    ("GET", "/marketplace/entries/{entry_id}/signature.p7s"): Call(
        "public", path="/marketplace/entries/x/signature.p7s"
    ),
    ("GET", "/marketplace/endorsers"): Call("public"),
    ("GET", "/marketplace/tags/{endorser}/{tag}"): Call("public", path="/marketplace/tags/x/y"),
}

#: persona -> expected answer per check ("ok" or the status)
EXPECT: dict[str, dict[str, Any]] = {
    "public": dict.fromkeys(PERSONAS, "ok"),
    "agent": dict.fromkeys(PERSONAS, 401),
    "cloud-admin": {**dict.fromkeys(PERSONAS, 403), "anonymous": 401, "admin": "ok"},
    "any": {**dict.fromkeys(PERSONAS, "ok"), "anonymous": 401},
    "self": {**dict.fromkeys(PERSONAS, 404), "anonymous": 401, "admin": "ok"},
    "read": {**dict.fromkeys(PERSONAS, "ok"), "anonymous": 401, "otto": 404},
    "update": {
        "anonymous": 401,
        "otto": 404,
        "rita": 403,
        "pete": 403,
        "olga": "ok",
        "paul": "ok",
        "admin": "ok",
    },
    "manage": {
        "anonymous": 401,
        "otto": 404,
        "rita": 403,
        "pete": 403,
        "olga": 403,
        "paul": "ok",
        "admin": "ok",
    },
    "create": {**dict.fromkeys(PERSONAS, "ok"), "anonymous": 401, "rita": 403},
}
EXPECT["delete"] = EXPECT["update"]


def app_routes(client: TestClient) -> set[tuple[str, str]]:
    found = set()
    for context in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        if isinstance(context.original_route, APIRoute | Route) and context.path.startswith(P):
            for method in context.methods or ():
                if method != "HEAD":
                    found.add((method, context.path.replace(":path}", "}")))
    return found


# -- the world --------------------------------------------------------------------------


def add_user(
    ctx: Ctx,
    name: str,
    project: str,
    role: Role,
    *,
    scopes: frozenset[str] | None = None,
) -> str:
    """A user who is ``role`` in ``project`` (made unlimited if new); returns a token."""
    with ctx.uow() as s:
        row = s.query(Project).filter_by(name=project).one_or_none()
        if row is None:
            row = projects.create_project(s, name=project, limits=UNLIMITED)
        user = s.query(User).filter_by(name=name).one_or_none()
        if user is None:
            user = User(name=name, default_project_id=row.id)
            s.add(user)
            s.flush()
        s.add(ProjectMember(project_id=row.id, user_id=user.id, role=role.value))
        s.flush()
        return auth.issue_token(s, user, row, "tests", scopes=scopes)


def add_host(ctx: Ctx) -> None:
    with ctx.uow() as s:
        s.add(
            Host(
                name="node-1",
                vcpus=256,
                memory_mib=1 << 20,
                credential_hash=auth.hash_secret(uuid.uuid4().hex),
                last_heartbeat=utcnow(),
            )
        )


@dataclass
class World:
    client: TestClient
    tokens: dict[str, str]
    ids: dict[str, str]

    def as_(self, persona: str) -> TestClient:
        self.client.headers.pop("Authorization", None)
        if persona != "anonymous":
            self.client.headers["Authorization"] = f"Bearer {self.tokens[persona]}"
        return self.client


@pytest.fixture
def world(app_client: TestClient, ctx: Ctx, admin_token: str, tmp_path: Path) -> World:
    tokens = {"admin": admin_token}
    for name, project, role in (
        ("olga", "physics", Role.MEMBER),
        ("pete", "physics", Role.MEMBER),
        ("rita", "physics", Role.READER),
        ("paul", "physics", Role.ADMIN),
        ("dan", "physics", Role.MEMBER),
        ("otto", "chemistry", Role.MEMBER),
        ("victim", "chemistry", Role.MEMBER),
    ):
        tokens[name] = add_user(ctx, name, project, role)
    add_host(ctx)
    world = World(app_client, tokens, {})
    olga = world.as_("olga")
    disk = make_qcow2(tmp_path / "disk.qcow2", "16M")
    resp = olga.post(f"{P}/images", params={"name": "img"}, content=disk.read_bytes())
    assert resp.status_code == 201, resp.text
    image = resp.json()["id"]
    made = olga.post(f"{P}/instances", json={"image": image, "name": "vm", "flavor": "t1.micro"})
    assert made.status_code == 202, made.text
    keeper = olga.post(
        f"{P}/instances", json={"image": image, "name": "keeper", "flavor": "t1.micro"}
    )
    assert keeper.status_code == 202, keeper.text
    victim_tokens = world.as_("victim").get(f"{P}/auth/tokens").json()
    world.ids = {
        "image": image,
        "vm": made.json()["instances"][0]["id"],
        "op": made.json()["operation"]["id"],
        "victim_token": victim_tokens[0]["token_id"],
    }
    return world


def send(world: World, persona: str, method: str, call: Call) -> Any:
    client = world.as_(persona)
    path = P + call.path.format(**world.ids) if call.path else P
    return client.request(
        method, path, json=call.json, params=call.params or None, content=call.content
    )


def outcome(resp: Any, call: Call) -> Any:
    if resp.status_code == 401:
        return 401
    if call.check == "public":
        return "ok"
    if resp.status_code == 403:
        return 403
    code = _code(resp)
    if resp.status_code == 404 and code in (call.hidden, "project_not_found"):
        return 404
    return "ok"


def _code(resp: Any) -> str:
    try:
        return str(resp.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


# -- tests ------------------------------------------------------------------------------


def test_every_route_is_in_the_matrix_and_in_the_access_table(app_client: TestClient) -> None:
    routes = app_routes(app_client)
    missing = sorted(r for r in routes if (r[0], r[1].removeprefix(P)) not in ROUTES)
    assert missing == [], f"add these routes to ROUTES in {__file__}"
    unruled = sorted(r for r in routes if access.rule_for(*r) is None)
    assert unruled == [], "add these routes to services/access.py ROUTES"
    stale = sorted(set(ROUTES) - {(m, p.removeprefix(P)) for m, p in routes})
    assert stale == [], "these routes are gone from the app"


def test_the_matrix(world: World) -> None:
    wrong = []
    for (method, template), call in ROUTES.items():
        call.path = call.path or template
        for persona in PERSONAS:
            resp = send(world, persona, method, call)
            got, want = outcome(resp, call), EXPECT[call.check][persona]
            if got != want:
                wrong.append(
                    f"{method} {template} as {persona}: {resp.status_code} {resp.text[:160]}"
                )
    assert wrong == []


def test_hidden_reads_exactly_like_missing(world: World) -> None:
    otto = world.as_("otto")
    hidden = otto.get(f"{P}/instances/{world.ids['vm']}").json()["error"]
    missing = otto.get(f"{P}/instances/{uuid.uuid4()}").json()["error"]
    assert hidden["code"] == missing["code"] == "instance_not_found"
    assert {k: v for k, v in hidden.items() if k != "message"} == {
        k: v for k, v in missing.items() if k != "message"
    }
    assert world.ids["vm"] not in str(otto.get(f"{P}/instances").json())
    assert "img" not in {i["name"] for i in otto.get(f"{P}/images").json()}


def test_forbidden_says_why(world: World) -> None:
    resp = world.as_("pete").delete(f"{P}/instances/{world.ids['vm']}")
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert error["code"] == "not_allowed"
    assert "another user" in error["message"]
    resp = world.as_("rita").post(f"{P}/instances", json={"image": world.ids["image"]})
    assert resp.status_code == 403
    assert "read-only" in resp.json()["error"]["message"]


def test_visibility_private_project_public(world: World, ctx: Ctx) -> None:
    from stratuslab.db.models import Image

    image = world.ids["image"]
    with ctx.uow() as s:
        s.get(Image, image).visibility = "private"  # type: ignore[union-attr]
    assert world.as_("pete").get(f"{P}/images/{image}").status_code == 404
    assert world.as_("olga").get(f"{P}/images/{image}").status_code == 200
    assert world.as_("paul").get(f"{P}/images/{image}").status_code == 200
    with ctx.uow() as s:
        s.get(Image, image).visibility = "public"  # type: ignore[union-attr]
    otto = world.as_("otto")
    assert otto.get(f"{P}/images/{image}").status_code == 200
    assert image in {i["id"] for i in otto.get(f"{P}/images").json()}
    resp = otto.delete(f"{P}/images/{image}")
    assert resp.status_code == 403
    assert "another project" in resp.json()["error"]["message"]
    # a public image from another project can be launched
    made = otto.post(f"{P}/instances", json={"image": image, "flavor": "t1.micro"})
    assert made.status_code == 202, made.text
    assert made.json()["instances"][0]["project_id"] != world.ids.get("physics")


def test_scopes_narrow_what_a_token_may_do(world: World, ctx: Ctx) -> None:
    with ctx.uow() as s:
        olga = s.query(User).filter_by(name="olga").one()
        physics = s.query(Project).filter_by(name="physics").one()
        world.tokens["olga-ro"] = auth.issue_token(
            s, olga, physics, "ro", scopes=frozenset({"compute:read"})
        )
    ro = world.as_("olga-ro")
    assert ro.get(f"{P}/instances/{world.ids['vm']}").status_code == 200
    resp = ro.post(f"{P}/instances/{world.ids['vm']}/actions", json={"action": "stop"})
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "missing_scope"
    assert ro.get(f"{P}/images").json()["error"]["code"] == "missing_scope"
    assert ro.get(f"{P}/auth/whoami").json()["scopes"] == ["compute:read"]


def test_a_cloud_admin_token_without_the_admin_scope_is_an_ordinary_user(
    world: World, ctx: Ctx
) -> None:
    with ctx.uow() as s:
        admin = s.query(User).filter_by(name="admin").one()
        project = s.get(Project, admin.default_project_id)
        assert project is not None
        world.tokens["everyday"] = auth.issue_token(
            s, admin, project, "everyday", scopes=frozenset({"compute:write", "images:write"})
        )
    everyday = world.as_("everyday")
    assert everyday.get(f"{P}/instances/{world.ids['vm']}").status_code == 404
    assert everyday.get(f"{P}/hosts").status_code == 403
    assert world.as_("admin").get(f"{P}/instances/{world.ids['vm']}").status_code == 200


def test_quota_row_exists_for_new_projects(world: World, ctx: Ctx) -> None:
    with ctx.sessions() as s:
        physics = s.query(Project).filter_by(name="physics").one()
        assert quotas.get_limits(s, quotas.PROJECT, physics.id) == UNLIMITED
