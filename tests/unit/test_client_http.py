"""The shared request and error mapping of the clients (client/http.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from stratuslab.client.http import JsonHttp, Server, seg
from stratuslab.errors import Conflict, NotFound, ServiceUnavailable, StratusError


def _plain(status: int, message: str, body: Any) -> StratusError:
    cls = Conflict if status == 409 else StratusError
    return cls(f"{message} ({body!r})", hint="plain")


TEST = Server(
    name="thing", connect_hint="start it", bad_response_hint="is it one?", plain_error=_plain
)


class _Client(JsonHttp):
    server = TEST

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self._send("GET", f"http://t{path}", where="http://t", **options)


def _client(handler: Any, **options: Any) -> _Client:
    return _Client(transport=httpx.MockTransport(handler), **options)


def test_headers_carry_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    _client(handler, token="T").get("/x", headers={"X-A": "b"})
    _client(handler).get("/y")
    assert seen[0].headers["Authorization"] == "Bearer T"
    assert seen[0].headers["Accept"] == "application/json"
    assert seen[0].headers["X-A"] == "b"
    assert "Authorization" not in seen[1].headers


def test_an_error_envelope_is_rebuilt() -> None:
    body = {"error": {"code": "thing_not_found", "message": "no such thing", "hint": "list"}}
    client = _client(lambda _: httpx.Response(404, json=body))
    with pytest.raises(NotFound) as info:
        client.get("/x")
    assert (info.value.code, info.value.message, info.value.hint) == (
        "thing_not_found",
        "no such thing",
        "list",
    )


def test_other_error_responses_go_to_the_servers_plain_error() -> None:
    client = _client(lambda _: httpx.Response(409, json={"detail": "taken"}))
    with pytest.raises(Conflict) as info:
        client.get("/x")
    assert info.value.message == "GET /x failed: HTTP 409 ({'detail': 'taken'})"
    assert info.value.hint == "plain"
    client = _client(lambda _: httpx.Response(500, content=b"oops"))
    with pytest.raises(StratusError, match=r"GET /x failed: HTTP 500 \(None\)"):
        client.get("/x")


@pytest.mark.parametrize("timeout_message", [False, True])
def test_transport_failures_are_service_unavailable(timeout_message: bool) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    class Timed(_Client):
        server = Server("thing", "start it", "", _plain, timeout_message=timeout_message)

    with pytest.raises(ServiceUnavailable) as info:
        Timed(transport=httpx.MockTransport(refused)).get("/x")
    assert info.value.message == "cannot reach the thing at http://t (refused)"
    assert info.value.hint == "start it"
    with pytest.raises(ServiceUnavailable) as info:
        Timed(transport=httpx.MockTransport(slow)).get("/x")
    expected = (
        "the thing at http://t did not answer in time (slow)"
        if timeout_message
        else "cannot reach the thing at http://t (slow)"
    )
    assert info.value.message == expected


def test_responses_that_do_not_parse_are_bad_responses() -> None:
    class Item(BaseModel):
        name: str

    client = _client(lambda _: httpx.Response(200, json={"name": 1}))
    with pytest.raises(StratusError) as info:
        client._parse(Item, client.get("/x"))
    assert info.value.code == "bad_response"
    assert info.value.message.startswith("unexpected response from the thing for /x: ")
    assert info.value.hint == "is it one?"
    with pytest.raises(StratusError, match="expected a JSON list"):
        client._parse_list(Item, client.get("/x"))
    ok = _client(lambda _: httpx.Response(200, json=[{"name": "a"}]))
    assert ok._parse_list(Item, ok.get("/x")) == [Item(name="a")]


def test_an_injected_client_is_not_closed() -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200)))
    with _Client(http=http):
        pass
    assert not http.is_closed
    with _Client(transport=httpx.MockTransport(lambda _: httpx.Response(200))) as owned:
        pass
    assert owned._http.is_closed


def test_seg_quotes_one_path_segment() -> None:
    assert seg("a b/c") == "a%20b%2Fc"
