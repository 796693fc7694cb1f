"""Node agents' credentials: checking them, and the cache that spares most checks a query.

A host receives its credential when it joins (``services/hosts.py``); the controller keeps
only its hash.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.db.models import Host
from stratuslab.errors import Unauthorized
from stratuslab.services.ttl_cache import TtlCache


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def authenticate_host(session: Session, credential: str | None) -> Host:
    if not credential:
        raise Unauthorized(
            "node agents must send their credential", hint="join the host with a join token"
        )
    host = session.scalar(select(Host).where(Host.credential_hash == hash_secret(credential)))
    if host is None:
        raise unknown_host()
    return host


def unknown_host() -> Unauthorized:
    return Unauthorized(
        "unknown node credential",
        hint="the host was removed or its credential is wrong; join it again with "
        "`stratus-node --join URL TOKEN`",
    )


class HostCredentialCache:
    """Node credentials checked recently: their hash -> the host row (detached).

    Every agent request carries its host's credential, thousands of times a minute on a big
    cloud; a cache hit costs a hash and a dictionary lookup instead of a database
    transaction. Only successes are kept, for ``ttl`` seconds. A host removed meanwhile is
    refused by the agent routes that write (their transaction reads the host row); the
    others (desired state, image download) notice it within ``ttl`` seconds.
    """

    def __init__(self, ttl: float = 30.0, size: int = 100_000) -> None:
        self._hosts: TtlCache[str, Host] = TtlCache(ttl, size)

    @property
    def ttl(self) -> float:
        return self._hosts.ttl

    def get(self, credential: str, *, now: float) -> Host | None:
        return self._hosts.get(hash_secret(credential), now=now)

    def put(self, credential: str, host: Host, *, now: float) -> None:
        self._hosts.put(hash_secret(credential), host, now=now)

    def forget(self, host_id: str) -> None:
        self._hosts.discard_if(lambda host: host.id == host_id)
