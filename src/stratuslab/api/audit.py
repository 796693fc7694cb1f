"""Audit middleware: records every mutating API call, after the response, in a transaction
of its own (on SQLite, one shared with other small writes: api/group_commit.py).

A pure ASGI middleware (streamed uploads pass through untouched). When the response has
been sent, it writes one ``audit_log`` row: who (the principal left in
``request.state.principal`` by ``api/deps.py``, or the user name a login claimed), what
(method, path, status), when, from where (the TCP peer, or the first ``X-Forwarded-For``
address when the peer is a trusted proxy) and how long it took. Writing the row can fail
without failing the call; it is logged. Node agents' heartbeats and reports are not
recorded (machine traffic, every few seconds per host).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stratuslab.api import group_commit
from stratuslab.identity.principal import Principal
from stratuslab.services import audit
from stratuslab.services.context import Ctx

log = logging.getLogger(__name__)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SKIPPED = frozenset({"/api/v1/agent/heartbeat", "/api/v1/agent/report"})


class AuditMiddleware:
    def __init__(self, app: ASGIApp, ctx: Ctx) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") not in MUTATING
            or scope.get("path") in SKIPPED
        ):
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            entry = _entry(scope, state, status, (time.perf_counter() - started) * 1000)
            try:
                # after the response: on SQLite in one transaction with other small writes
                await group_commit.write(
                    scope.get("app"), self.ctx, lambda uow: audit.record(uow.session, entry)
                )
            except Exception:  # the call happened; losing its audit row must not hide it
                log.exception("could not write the audit record of %s %s", entry.method, entry.path)


def _entry(scope: Scope, state: dict[str, Any], status: int, duration_ms: float) -> audit.Entry:
    principal = state.get("principal")
    actor = state.get("actor")
    user_id = credential = project_id = None
    if isinstance(principal, Principal):
        user_id, credential = principal.user_id, principal.credential_id
        project_id = principal.project_id or None
    return audit.Entry(
        method=str(scope.get("method", "")),
        path=str(scope.get("path", "")),
        status=status,
        source=_source(scope, state),
        duration_ms=duration_ms,
        user_id=user_id,
        credential=credential or "",
        project_id=project_id,
        actor=str(actor) if actor and user_id is None else "",
    )


def _source(scope: Scope, state: dict[str, Any]) -> str:
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    forwarded = state.get("forwarded_for")
    return f"{forwarded} via {peer}" if forwarded else peer
