"""The synchronous StratusLab client: one method per REST call, schema objects out.

Every failure leaves this module as a :class:`~stratuslab.errors.StratusError`: error
envelopes are rebuilt with :func:`~stratuslab.errors.error_from_dict`, transport failures
become :class:`~stratuslab.errors.ServiceUnavailable`, and responses that do not match the
wire types become a plain ``StratusError`` with code ``bad_response``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pydantic

from stratuslab.client.http import JsonHttp, Server, bad_response
from stratuslab.client.http import seg as _seg
from stratuslab.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    OperationTimeout,
    ServiceUnavailable,
    StratusError,
    Unauthorized,
    error_from_dict,
)
from stratuslab.schemas.common import CursorPage
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

CONNECT_HINT = "is the controller running? `stratus up` starts a local cloud"
UPLOAD_CHUNK = 1024 * 1024
#: longest single long-poll asked of the server while waiting for an operation
POLL_SECONDS = 2.0
UPLOAD_READ_SECONDS = 600.0

ProgressCallback = Callable[[Operation], None]

#: error classes for error responses that do not carry the StratusLab envelope
_PLAIN_STATUS_ERRORS: dict[int, type[StratusError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}


def _plain_error(status: int, message: str, body: Any) -> StratusError:
    if isinstance(body, dict) and "detail" in body:
        message += f": {_detail_text(body['detail'])}"
    cls = _PLAIN_STATUS_ERRORS.get(status, StratusError)
    hint = CONNECT_HINT if cls is ServiceUnavailable else ""
    return cls(message, hint=hint, details={"status": status})


def _detail_text(detail: Any) -> str:
    """FastAPI's default error bodies: a string, or a list of validation problems."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg")))
        return "; ".join(parts)
    return str(detail)


CONTROLLER = Server(
    name="controller",
    connect_hint=CONNECT_HINT,
    bad_response_hint="the client and the controller versions may differ",
    plain_error=_plain_error,
    timeout_message=True,
)


class StratusClient(JsonHttp):
    """Talks to one controller. ``transport`` or ``http`` replace the network in tests."""

    server = CONTROLLER

    def __init__(
        self,
        endpoint: str,
        token: str = "",
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        super().__init__(token=token, timeout=timeout, transport=transport, http=http)

    # -- service ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "version": ...}``; raises ServiceUnavailable when unreachable."""
        body = self._request("GET", "/health").json()
        if not isinstance(body, dict):
            raise _bad_response("/health", "expected a JSON object")
        return body

    # -- flavors ---------------------------------------------------------------------------

    def list_flavors(self) -> list[Flavor]:
        return self._parse_list(Flavor, self._request("GET", "/flavors"))

    def create_flavor(self, spec: FlavorCreate) -> Flavor:
        response = self._request("POST", "/flavors", json=spec.model_dump(mode="json"))
        return self._parse(Flavor, response)

    def delete_flavor(self, name: str) -> None:
        self._request("DELETE", f"/flavors/{_seg(name)}")

    # -- images ----------------------------------------------------------------------------

    def list_images(self) -> list[Image]:
        return self._parse_list(Image, self._request("GET", "/images"))

    def upload_image(
        self,
        path: Path,
        name: str,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Image:
        """Stream ``path`` to the controller; ``on_bytes(n)`` is called after each chunk."""
        size = path.stat().st_size
        response = self._request(
            "POST",
            "/images",
            params={"name": name},
            content=_read_chunks(path, on_bytes),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
            },
            # the controller checksums and inspects the file before it answers
            timeout=httpx.Timeout(self.timeout, read=max(self.timeout, UPLOAD_READ_SECONDS)),
        )
        return self._parse(Image, response)

    def get_image(self, ref: str) -> Image:
        return self._parse(Image, self._request("GET", f"/images/{_seg(ref)}"))

    def delete_image(self, ref: str) -> None:
        self._request("DELETE", f"/images/{_seg(ref)}")

    # -- instances -------------------------------------------------------------------------

    def list_instances(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
        cursor: str | None = None,
        count: bool | None = None,
    ) -> CursorPage[Instance]:
        params = _params(
            status=status,
            limit=limit,
            offset=offset or None,
            cursor=cursor,
            count=None if count is None else str(count).lower(),
        )
        return self._parse(CursorPage[Instance], self._request("GET", "/instances", params=params))

    def iter_instances(
        self, *, status: str | None = None, page_size: int = 100
    ) -> Iterator[Instance]:
        """Every instance, following the pages (by key; by offset from an older server)."""
        offset = 0
        cursor: str | None = None
        while True:
            page = self.list_instances(
                status=status, limit=page_size, offset=0 if cursor else offset, cursor=cursor
            )
            yield from page.items
            offset += len(page.items)
            if not page.items:
                return
            if page.next_cursor:
                cursor = page.next_cursor
            elif cursor or page.total is None or offset >= page.total:
                return

    def create_instances(self, spec: InstanceCreate) -> InstanceCreated:
        response = self._request(
            "POST", "/instances", json=spec.model_dump(mode="json", exclude_none=True)
        )
        return self._parse(InstanceCreated, response)

    def get_instance(self, ref: str) -> Instance:
        return self._parse(Instance, self._request("GET", f"/instances/{_seg(ref)}"))

    def delete_instance(self, ref: str) -> Operation:
        return self._parse(Operation, self._request("DELETE", f"/instances/{_seg(ref)}"))

    def instance_action(self, ref: str, action: str, *, hard: bool = False) -> Operation:
        body = {"action": action, "hard": hard}
        try:
            body = InstanceAction.model_validate(body).model_dump(mode="json")
        except pydantic.ValidationError as exc:
            raise InvalidInput(
                f"unknown instance action {action!r}", hint="use start, stop or reboot"
            ) from exc
        response = self._request("POST", f"/instances/{_seg(ref)}/actions", json=body)
        return self._parse(Operation, response)

    def save_instance(self, ref: str, name: str) -> Operation:
        """Save a stopped instance's root disk as the image ``name``."""
        response = self._request("POST", f"/instances/{_seg(ref)}/save", json={"name": name})
        return self._parse(Operation, response)

    def image_metadata(self, ref: str) -> dict[str, Any]:
        """The draft (unsigned) marketplace metadata of a saved image."""
        data = self._request("GET", f"/images/{_seg(ref)}/metadata").json()
        if not isinstance(data, dict):
            raise StratusError("unexpected answer from the controller", code="bad_response")
        return data

    def console(self, ref: str, offset: int = 0) -> ConsoleOutput:
        response = self._request(
            "GET", f"/instances/{_seg(ref)}/console", params={"offset": offset}
        )
        return self._parse(ConsoleOutput, response)

    # -- operations ------------------------------------------------------------------------

    def get_operation(self, operation_id: str, wait: float = 0) -> Operation:
        """One (long-)poll: the server answers when the operation ends or after ``wait`` s."""
        response = self._request(
            "GET",
            f"/operations/{_seg(operation_id)}",
            params={"wait": _seconds(wait)} if wait > 0 else None,
            timeout=self.timeout + wait,
        )
        return self._parse(Operation, response)

    def wait_operation(
        self,
        operation_id: str,
        timeout: float = 600.0,
        *,
        on_progress: ProgressCallback | None = None,
        poll: float = POLL_SECONDS,
    ) -> Operation:
        """Long-poll until the operation ends; raise its error if it failed.

        ``on_progress`` sees every intermediate state (its ``progress`` text changes as the
        work goes on). Raises :class:`OperationTimeout` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            operation = self.get_operation(operation_id, wait=max(0.0, min(poll, remaining)))
            if on_progress is not None:
                on_progress(operation)
            if operation.status != "running":
                return _finished(operation)
            if deadline - time.monotonic() <= 0:
                raise OperationTimeout(
                    f"operation {operation_id} ({operation.kind}) is still running "
                    f"after {timeout:g} s",
                    hint="it goes on in the background; check it later with `stratus list`",
                    details={"operation_id": operation_id},
                )

    # -- hosts -----------------------------------------------------------------------------

    def list_hosts(self) -> list[Host]:
        return self._parse_list(Host, self._request("GET", "/hosts"))

    def get_host(self, ref: str) -> Host:
        return self._parse(Host, self._request("GET", f"/hosts/{_seg(ref)}"))

    def host_state(self, ref: str, action: str, reason: str = "") -> Host:
        """enable, disable or drain a host."""
        response = self._request(
            "POST", f"/hosts/{_seg(ref)}/state", json={"action": action, "reason": reason}
        )
        return self._parse(Host, response)

    def update_host(self, ref: str, changes: Mapping[str, Any]) -> Host:
        """Labels (a None value removes one), ratios, reset_ratios."""
        return self._parse(Host, self._request("PATCH", f"/hosts/{_seg(ref)}", json=changes))

    def remove_host(self, ref: str) -> None:
        self._request("DELETE", f"/hosts/{_seg(ref)}")

    def migrate_instance(
        self, ref: str, host: str | None = None, *, live: bool = False
    ) -> Operation:
        """Migrate an instance, cold or ``live`` (to ``host``, or where the scheduler says)."""
        body: dict[str, Any] = {"host": host} if host else {}
        if live:
            body["live"] = True
        response = self._request("POST", f"/instances/{_seg(ref)}/migrate", json=body)
        return self._parse(Operation, response)

    def create_join_token(self, ttl: float = 3600) -> JoinTokenCreated:
        response = self._request("POST", "/hosts/tokens", params={"ttl": _seconds(ttl)})
        return self._parse(JoinTokenCreated, response)

    # -- events ----------------------------------------------------------------------------

    def list_events(
        self, instance_id: str | None = None, after: int = 0, limit: int = 100
    ) -> list[Event]:
        params = _params(instance_id=instance_id, after=after, limit=limit)
        return self._parse_list(Event, self._request("GET", "/events", params=params))

    def iter_events(
        self, instance_id: str | None = None, after: int = 0, page_size: int = 500
    ) -> Iterator[Event]:
        """Every event after ``after``, oldest first, following the pages."""
        while True:
            events = self.list_events(instance_id, after=after, limit=page_size)
            yield from events
            if len(events) < page_size:
                return
            after = events[-1].id

    # -- plumbing --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> httpx.Response:
        """``timeout`` None means the client's default."""
        return self._send(
            method,
            f"{self.endpoint}/api/v1{path}",
            where=self.endpoint,
            params=params,
            json=json,
            content=content,
            headers=headers,
            timeout=self.timeout if timeout is None else timeout,
        )


def _finished(operation: Operation) -> Operation:
    if operation.status == "failed":
        problem = operation.error or {
            "code": "error",
            "message": f"operation {operation.id} ({operation.kind}) failed",
        }
        raise error_from_dict(problem)
    return operation


def _bad_response(path: str, why: str) -> StratusError:
    return bad_response(CONTROLLER, path, why)


def _read_chunks(path: Path, on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(UPLOAD_CHUNK):
            yield chunk
            if on_bytes is not None:
                on_bytes(len(chunk))


def _params(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _seconds(value: float) -> str:
    return f"{value:g}"
