"""What the typed clients share: one JSON-over-HTTP connection and its error mapping.

:class:`JsonHttp` owns (or borrows) an ``httpx.Client`` and turns every failure into a
:class:`~stratuslab.errors.StratusError`: error envelopes are rebuilt with
:func:`~stratuslab.errors.error_from_dict`, other error responses go through the server's
``plain_error``, transport failures become :class:`~stratuslab.errors.ServiceUnavailable`,
and responses that do not match the wire types a ``StratusError`` with code
``bad_response``. A :class:`Server` says which server it is, for the messages and hints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import pydantic

from stratuslab.errors import ServiceUnavailable, StratusError, error_from_dict

M = TypeVar("M", bound=pydantic.BaseModel)

#: an error response without the StratusLab envelope: (status, message, JSON body or None)
PlainError = Callable[[int, str, Any], StratusError]


@dataclass(frozen=True)
class Server:
    """The kind of server a client talks to, as its errors name it."""

    #: "controller", "marketplace": in "cannot reach the controller at URL"
    name: str
    #: the hint of a server that cannot be reached
    connect_hint: str
    #: the hint of a response that does not match the wire types
    bad_response_hint: str
    #: the error of an error response without the envelope
    plain_error: PlainError
    #: whether a timeout has its own message ("did not answer in time")
    timeout_message: bool = False


class JsonHttp:
    """One connection to ``server``; ``transport`` or ``http`` replace the network in tests."""

    server: Server

    def __init__(
        self,
        *,
        token: str = "",
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.token = token
        self._owns_http = http is None
        self._http = http or httpx.Client(transport=transport, timeout=timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        *,
        where: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> httpx.Response:
        """The response of a request to ``url``, or the StratusError of its failure.

        ``where`` is the server's address in messages; ``timeout`` (None: the client's own)
        applies to a connection this object made (an injected client keeps its timeouts).
        """
        all_headers = {"Accept": "application/json", **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        options: dict[str, Any] = {}
        if self._owns_http and timeout is not None:
            options["timeout"] = timeout
        server = self.server
        try:
            response = self._http.request(
                method,
                url,
                params=params,
                json=json,
                content=content,
                headers=all_headers,
                **options,
            )
        except httpx.TimeoutException as exc:
            if not server.timeout_message:
                raise _unreachable(server, where, exc) from exc
            raise ServiceUnavailable(
                f"the {server.name} at {where} did not answer in time ({exc})",
                hint=server.connect_hint,
            ) from exc
        except httpx.TransportError as exc:
            raise _unreachable(server, where, exc) from exc
        if response.is_error:
            raise error_from_response(response, server.plain_error)
        return response

    def _parse(self, model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate(response.json())
        except (ValueError, pydantic.ValidationError) as exc:
            raise bad_response(self.server, response.url.path, str(exc)) from exc

    def _parse_list(self, model: type[M], response: httpx.Response) -> list[M]:
        try:
            body = response.json()
            if not isinstance(body, list):
                raise ValueError("expected a JSON list")
            return [model.model_validate(item) for item in body]
        except (ValueError, pydantic.ValidationError) as exc:
            raise bad_response(self.server, response.url.path, str(exc)) from exc


def error_from_response(response: httpx.Response, plain_error: PlainError) -> StratusError:
    """The StratusError of an error response: its envelope, else ``plain_error``'s."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return error_from_dict(body["error"], status)
    message = f"{response.request.method} {response.request.url.path} failed: HTTP {status}"
    return plain_error(status, message, body)


def bad_response(server: Server, path: str, why: str) -> StratusError:
    return StratusError(
        f"unexpected response from the {server.name} for {path}: {why}",
        hint=server.bad_response_hint,
        code="bad_response",
    )


def _unreachable(server: Server, where: str, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"cannot reach the {server.name} at {where} ({exc})", hint=server.connect_hint
    )


def seg(ref: str) -> str:
    """One URL path segment, quoted."""
    return quote(ref, safe="")
