"""A typed client of the marketplace routes, for a standalone marketplace or a controller.

``MarketplaceClient("http://host:8771")`` talks to ``stratus-marketplace``;
``MarketplaceClient("http://host:8770/api/v1")`` (or :meth:`MarketplaceClient.of_controller`)
to the marketplace a controller serves. Errors are :class:`~stratuslab.errors.StratusError`,
as with :class:`~stratuslab.client.StratusClient`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from stratuslab.client.client import StratusClient
from stratuslab.client.http import JsonHttp, Server, bad_response
from stratuslab.client.http import seg as _seg
from stratuslab.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable, StratusError
from stratuslab.marketplace.schemas import Endorser, Entry, Feed
from stratuslab.marketplace.schemas import SignedEntry as SignedEntryWire
from stratuslab.schemas.common import Page

HINT = "is the marketplace running, and is the URL right (e.g. http://host:8771)?"
_PLAIN = {404: NotFound, 409: Conflict, 413: InvalidInput, 415: InvalidInput, 422: InvalidInput}


def _plain_error(status: int, message: str, body: Any) -> StratusError:
    cls = _PLAIN.get(status, ServiceUnavailable if status >= 500 else StratusError)
    return cls(message, hint=HINT if status in (404, 502, 503) else "")


MARKETPLACE = Server(
    name="marketplace",
    connect_hint=HINT,
    bad_response_hint="is this URL a StratusLab marketplace?",
    plain_error=_plain_error,
)


@dataclass(frozen=True)
class SignedBytes:
    """An entry's exact metadata bytes and its signature."""

    entry_id: str
    metadata: bytes
    signature: bytes
    signature_format: str


class MarketplaceClient(JsonHttp):
    """One marketplace. ``url`` is where ``/marketplace/...`` is found."""

    server = MARKETPLACE

    def __init__(
        self,
        url: str,
        *,
        token: str = "",
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        base = url.rstrip("/")
        self.url = base.removesuffix("/marketplace")
        super().__init__(token=token, timeout=timeout, transport=transport, http=http)

    @classmethod
    def of_controller(cls, client: StratusClient) -> MarketplaceClient:
        """The marketplace of the controller ``client`` talks to, over the same connection."""
        return cls(f"{client.endpoint}/api/v1", token=client.token, http=client._http)

    # -- entries ---------------------------------------------------------------------------

    def upload(self, metadata: bytes, signature: bytes) -> Entry:
        body = {
            "metadata": base64.b64encode(metadata).decode("ascii"),
            "signature": base64.b64encode(signature).decode("ascii"),
        }
        return self._parse(Entry, self._request("POST", "/entries", json=body))

    def search(
        self,
        *,
        endorser: str | None = None,
        os: str | None = None,
        arch: str | None = None,
        kind: str | None = None,
        tag: str | None = None,
        status: str = "valid",
        text: str | None = None,
        identifier: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[Entry]:
        """The newest entry of each (image, endorser) matching every filter given."""
        params = {
            "endorser": endorser,
            "os": os,
            "arch": arch,
            "kind": kind,
            "tag": tag,
            "status": status,
            "q": text,
            "identifier": identifier,
            "limit": limit,
            "offset": offset,
        }
        response = self._request("GET", "/entries", params=params)
        return self._parse(Page[Entry], response)

    def image_entries(self, identifier: str) -> list[Entry]:
        """Every entry of an image, newest first."""
        return self._parse_list(Entry, self._request("GET", f"/images/{_seg(identifier)}"))

    def endorser_entries(
        self, identifier: str, endorser: str, *, created: datetime | None = None
    ) -> list[Entry]:
        params = {"created": created.isoformat()} if created is not None else None
        path = f"/images/{_seg(identifier)}/endorsers/{_seg(endorser)}"
        return self._parse_list(Entry, self._request("GET", path, params=params))

    def get_entry(self, entry_id: str) -> Entry:
        return self._parse(Entry, self._request("GET", f"/entries/{_seg(entry_id)}"))

    def signed(self, entry_id: str) -> SignedBytes:
        """The exact signed bytes of an entry, to verify again or to copy elsewhere."""
        wire = self._parse(
            SignedEntryWire, self._request("GET", f"/entries/{_seg(entry_id)}/signed")
        )
        try:
            metadata = base64.b64decode(wire.metadata, validate=True)
            signature = base64.b64decode(wire.signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad_response(f"/entries/{entry_id}/signed", str(exc)) from exc
        return SignedBytes(wire.entry_id, metadata, signature, wire.signature_format)

    def endorsers(self) -> list[Endorser]:
        return self._parse_list(Endorser, self._request("GET", "/endorsers"))

    def resolve_tag(self, endorser: str, tag: str) -> Entry:
        """The newest valid entry of ``endorser`` (email or DN) tagged ``tag``."""
        return self._parse(Entry, self._request("GET", f"/tags/{_seg(endorser)}/{_seg(tag)}"))

    def feed(
        self, *, after: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> Feed:
        """One page of every stored entry, in storage order (replication)."""
        params = {
            "after": after,
            "since": since.isoformat() if since is not None else None,
            "limit": limit,
        }
        return self._parse(Feed, self._request("GET", "/feed", params=params))

    # -- plumbing --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = f"{self.url}/marketplace{path}"
        return self._send(method, url, where=self.url, params=query, json=json)


def _bad_response(path: str, why: str) -> StratusError:
    return bad_response(MARKETPLACE, path, why)
