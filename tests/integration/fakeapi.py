"""An in-memory fake of the controller's REST API, served through ``httpx.MockTransport``.

It speaks the real wire types (``stratuslab.schemas``) so that a drift between the fake and the
schemas fails loudly. Operations finish after ``steps`` polls; ``fail_next`` makes the next
operation fail with the given problem.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from stratuslab.client import StratusClient
from stratuslab.schemas.common import Page
from stratuslab.schemas.events import Event
from stratuslab.schemas.flavors import Flavor, FlavorCreate
from stratuslab.schemas.hosts import Host, JoinTokenCreated
from stratuslab.schemas.images import Image
from stratuslab.schemas.instances import (
    ConsoleOutput,
    Instance,
    InstanceAction,
    InstanceCreate,
    InstanceCreated,
)
from stratuslab.schemas.operations import Operation

ENDPOINT = "http://fake.test:8770"
TOKEN = "secret-token"
Handler = Callable[[httpx.Request, re.Match[str]], httpx.Response]


def now() -> datetime:
    return datetime.now(UTC)


def problem(status: int, code: str, message: str, hint: str = "") -> httpx.Response:
    body = {"error": {"code": code, "message": message, "hint": hint, "details": {}}}
    return httpx.Response(status, json=body)


def not_found(kind: str, ref: str) -> httpx.Response:
    hint = f"list them: `stratus {kind} list`"
    return problem(404, "not_found", f"{kind} {ref!r} not found", hint)


@dataclass
class PendingOp:
    operation: Operation
    on_success: Callable[[], None]
    polls_left: int
    failure: dict[str, Any] | None = None


@dataclass
class FakeCloud:
    token: str = TOKEN
    steps: int = 2
    fail_next: dict[str, Any] | None = None
    flavors: dict[str, Flavor] = field(default_factory=dict)
    images: dict[str, Image] = field(default_factory=dict)
    uploads: dict[str, bytes] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    operations: dict[str, PendingOp] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    consoles: dict[str, str] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    _ports: itertools.count[int] = field(default_factory=lambda: itertools.count(22001))

    def __post_init__(self) -> None:
        self.add_flavor("small", vcpus=1, memory_mib=512, default=True)
        self.add_flavor("medium", vcpus=2, memory_mib=2048)
        self.add_host("node-1")
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (m, re.compile(f"^/api/v1{p}$"), h)
            for m, p, h in (
                ("GET", "/health", self._health),
                ("GET", "/flavors", self._list_flavors),
                ("POST", "/flavors", self._create_flavor),
                ("DELETE", "/flavors/(?P<ref>[^/]+)", self._delete_flavor),
                ("GET", "/images", self._list_images),
                ("POST", "/images", self._upload_image),
                ("GET", "/images/(?P<ref>[^/]+)", self._get_image),
                ("DELETE", "/images/(?P<ref>[^/]+)", self._delete_image),
                ("GET", "/instances", self._list_instances),
                ("POST", "/instances", self._create_instances),
                ("GET", "/instances/(?P<ref>[^/]+)", self._get_instance),
                ("DELETE", "/instances/(?P<ref>[^/]+)", self._delete_instance),
                ("POST", "/instances/(?P<ref>[^/]+)/actions", self._action),
                ("GET", "/instances/(?P<ref>[^/]+)/console", self._console),
                ("GET", "/operations/(?P<ref>[^/]+)", self._get_operation),
                ("GET", "/hosts", self._list_hosts),
                ("POST", "/hosts/tokens", self._create_token),
                ("GET", "/hosts/(?P<ref>[^/]+)", self._get_host),
                ("GET", "/events", self._list_events),
            )
        ]

    # -- wiring ----------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self, token: str | None = None) -> StratusClient:
        return StratusClient(
            ENDPOINT, self.token if token is None else token, transport=self.transport()
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path != "/api/v1/health" and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return problem(401, "unauthorized", "invalid or missing token", "check --token")
        methods_seen = False
        for method, pattern, handler in self.routes:
            match = pattern.match(path)
            if match:
                methods_seen = True
                if method == request.method:
                    return handler(request, match)
        if methods_seen:
            return httpx.Response(405, json={"detail": "Method Not Allowed"})
        return httpx.Response(404, json={"detail": "Not Found"})

    # -- seeding ---------------------------------------------------------------------------

    def add_flavor(self, name: str, *, vcpus: int, memory_mib: int, default: bool = False) -> None:
        self.flavors[name] = Flavor(
            id=str(uuid.uuid4()),
            name=name,
            vcpus=vcpus,
            memory_mib=memory_mib,
            swap_mib=0,
            disk_gib=0,
            builtin=True,
            is_default=default,
            created_at=now(),
        )

    def add_host(self, name: str, state: str = "enabled") -> Host:
        host = Host(
            id=str(uuid.uuid4()),
            name=name,
            state=state,
            hypervisor="qemu",
            arch="x86_64",
            vcpus=8,
            memory_mib=16384,
            disk_gib=100,
            usage={},
            last_heartbeat=now(),
            agent_version="0.1.0",
            created_at=now(),
        )
        self.hosts[host.id] = host
        return host

    def add_image(self, name: str, data: bytes = b"QFI\xfb") -> Image:
        image = Image(
            id=str(uuid.uuid4()),
            name=name,
            format="qcow2",
            size_bytes=len(data),
            virtual_size_bytes=1 << 30,
            sha256="0" * 64,
            status="available",
            visibility="private",
            owner_id="u1",
            project_id="p1",
            created_at=now(),
        )
        self.images[image.id] = image
        self.uploads[image.id] = data
        return image

    def add_event(self, kind: str, message: str, instance_id: str | None = None) -> Event:
        event = Event(
            id=len(self.events) + 1,
            time=now(),
            kind=kind,
            level="info",
            message=message,
            instance_id=instance_id,
            host_id=None,
            data={},
        )
        self.events.append(event)
        return event

    # -- helpers ---------------------------------------------------------------------------

    def _find(self, table: dict[str, Any], ref: str) -> Any:
        if ref in table:
            return table[ref]
        return next((v for v in table.values() if getattr(v, "name", None) == ref), None)

    def _operation(
        self, kind: str, target_ids: list[str], on_success: Callable[[], None]
    ) -> Operation:
        op = Operation(
            id=str(uuid.uuid4()),
            kind=kind,
            status="running",
            target_type="instance",
            target_ids=target_ids,
            error=None,
            progress="queued",
            created_at=now(),
            finished_at=None,
        )
        self.operations[op.id] = PendingOp(op, on_success, self.steps, self.fail_next)
        self.fail_next = None
        return op

    def _set(self, instance_id: str, **changes: Any) -> None:
        self.instances[instance_id] = self.instances[instance_id].model_copy(update=changes)

    @staticmethod
    def _json(model: Any, status: int = 200) -> httpx.Response:
        if isinstance(model, list):
            return httpx.Response(status, json=[m.model_dump(mode="json") for m in model])
        return httpx.Response(status, json=model.model_dump(mode="json"))

    # -- routes ----------------------------------------------------------------------------

    def _health(self, _r: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        return httpx.Response(200, json={"status": "ok", "version": "0.1.0"})

    def _list_flavors(self, _r: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        return self._json(list(self.flavors.values()))

    def _create_flavor(self, request: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        spec = FlavorCreate.model_validate_json(request.content)
        if spec.name in self.flavors:
            return problem(409, "conflict", f"flavor {spec.name!r} exists", "pick another name")
        flavor = Flavor(
            id=str(uuid.uuid4()),
            builtin=False,
            is_default=False,
            created_at=now(),
            **spec.model_dump(),
        )
        self.flavors[flavor.name] = flavor
        return self._json(flavor, 201)

    def _delete_flavor(self, _r: httpx.Request, m: re.Match[str]) -> httpx.Response:
        if self.flavors.pop(m["ref"], None) is None:
            return not_found("flavor", m["ref"])
        return httpx.Response(204)

    def _list_images(self, _r: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        return self._json(list(self.images.values()))

    def _upload_image(self, request: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        assert request.headers["Content-Type"] == "application/octet-stream"
        data = request.read()
        image = self.add_image(request.url.params["name"], data)
        return self._json(image, 201)

    def _get_image(self, _r: httpx.Request, m: re.Match[str]) -> httpx.Response:
        image = self._find(self.images, m["ref"])
        return self._json(image) if image else not_found("image", m["ref"])

    def _delete_image(self, _r: httpx.Request, m: re.Match[str]) -> httpx.Response:
        image = self._find(self.images, m["ref"])
        if image is None:
            return not_found("image", m["ref"])
        del self.images[image.id]
        return httpx.Response(204)

    def _list_instances(self, request: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        params = request.url.params
        items = [
            i
            for i in self.instances.values()
            if "status" not in params or i.status == params["status"]
        ]
        limit, offset = int(params.get("limit", 100)), int(params.get("offset", 0))
        page = Page[Instance](
            items=items[offset : offset + limit], total=len(items), limit=limit, offset=offset
        )
        return self._json(page)

    def _create_instances(self, request: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        spec = InstanceCreate.model_validate_json(request.content)
        image = self._find(self.images, spec.image)
        if image is None:
            return not_found("image", spec.image)
        flavor = self.flavors.get(spec.flavor or "small")
        if flavor is None:
            return not_found("flavor", spec.flavor or "")
        host = next(iter(self.hosts.values()))
        created = []
        for n in range(spec.count):
            name = spec.name or "vm"
            if spec.count > 1:
                name = f"{name}-{n + 1}"
            instance = Instance(
                id=str(uuid.uuid4()),
                name=name,
                image_id=image.id,
                flavor_name=flavor.name,
                vcpus=flavor.vcpus,
                memory_mib=flavor.memory_mib,
                desired="running",
                status="pending",
                status_reason="",
                host_id=None,
                ssh_port=None,
                generation=1,
                observed_generation=0,
                owner_id="u1",
                project_id="p1",
                created_at=now(),
                updated_at=now(),
                started_at=None,
            )
            self.instances[instance.id] = instance
            self.consoles[instance.id] = f"booting {name}\nlogin: "
            self.add_event("instance.created", f"{name} created", instance.id)
            created.append(instance)
        ids = [i.id for i in created]

        def boot() -> None:
            for instance_id in ids:
                port = next(self._ports)
                self._set(
                    instance_id,
                    status="running",
                    host_id=host.id,
                    host_name=host.name,
                    ssh_port=port,
                    address=f"127.0.0.1:{port}",
                )
                self.add_event("instance.running", "running", instance_id)

        op = self._operation("instance.create", ids, boot)
        return self._json(InstanceCreated(operation=op, instances=created), 202)

    def _get_instance(self, _r: httpx.Request, m: re.Match[str]) -> httpx.Response:
        instance = self._find(self.instances, m["ref"])
        return self._json(instance) if instance else not_found("instance", m["ref"])

    def _delete_instance(self, _r: httpx.Request, m: re.Match[str]) -> httpx.Response:
        instance = self._find(self.instances, m["ref"])
        if instance is None:
            return not_found("instance", m["ref"])
        self._set(instance.id, desired="deleted", status="deleting")
        op = self._operation(
            "instance.delete", [instance.id], lambda: self.instances.pop(instance.id)
        )
        return self._json(op, 202)

    def _action(self, request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        instance = self._find(self.instances, m["ref"])
        if instance is None:
            return not_found("instance", m["ref"])
        action = InstanceAction.model_validate_json(request.content)
        final = {"start": "running", "stop": "stopped", "reboot": "running"}[action.action]

        def done() -> None:
            self._set(instance.id, status=final)

        op = self._operation(f"instance.{action.action}", [instance.id], done)
        return self._json(op, 202)

    def _console(self, request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        instance = self._find(self.instances, m["ref"])
        if instance is None:
            return not_found("instance", m["ref"])
        offset = int(request.url.params.get("offset", 0))
        text = self.consoles.get(instance.id, "")
        out = ConsoleOutput(
            instance_id=instance.id, offset=offset, next_offset=len(text), data=text[offset:]
        )
        return self._json(out)

    def _get_operation(self, _r: httpx.Request, m: re.Match[str]) -> httpx.Response:
        pending = self.operations.get(m["ref"])
        if pending is None:
            return not_found("operation", m["ref"])
        op = pending.operation
        if op.status == "running":
            pending.polls_left -= 1
            if pending.polls_left > 0:
                op = op.model_copy(update={"progress": f"step {self.steps - pending.polls_left}"})
            elif pending.failure is not None:
                for target in op.target_ids:
                    reason = pending.failure["message"]
                    self._set(target, status="failed", status_reason=reason)
                op = op.model_copy(
                    update={"status": "failed", "error": pending.failure, "finished_at": now()}
                )
            else:
                pending.on_success()
                op = op.model_copy(
                    update={"status": "succeeded", "progress": "done", "finished_at": now()}
                )
            pending.operation = op
        return self._json(op)

    def _list_hosts(self, _r: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        return self._json(list(self.hosts.values()))

    def _get_host(self, _r: httpx.Request, m: re.Match[str]) -> httpx.Response:
        host = self._find(self.hosts, m["ref"])
        return self._json(host) if host else not_found("host", m["ref"])

    def _create_token(self, request: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        ttl = float(request.url.params.get("ttl", 3600))
        expires = datetime.fromtimestamp(now().timestamp() + ttl, UTC)
        created = JoinTokenCreated(token="join-" + uuid.uuid4().hex, expires_at=expires)
        return self._json(created, 201)

    def _list_events(self, request: httpx.Request, _m: re.Match[str]) -> httpx.Response:
        params = request.url.params
        after, limit = int(params.get("after", 0)), int(params.get("limit", 100))
        wanted = params.get("instance_id")
        events = [
            e for e in self.events if e.id > after and (wanted is None or e.instance_id == wanted)
        ]
        return self._json(events[:limit])
