"""API-token principals checked recently, so a read costs no identity query.

Every user request carries a credential; for an API token its check is one query (the
token, its user and the user's roles). :class:`PrincipalCache` keeps the resulting
:class:`~stratuslab.identity.Principal` for ``ttl`` seconds (``token_cache_seconds``),
keyed by a hash of the token and the project the request asks for.

Staleness is bounded:

* in this process, any committed change to a token, a user, a project or a membership
  makes the cached entries of that database stale (an ORM ``after_commit`` hook,
  :func:`watch`), so a revocation, a disabled user or a removed membership takes effect on
  the next request;
* another controller process sees such a change within ``ttl`` seconds;
* an entry never outlives its token's expiry.

Only successes are kept: a bad token is looked up (and refused) every time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from stratuslab.db.models import ApiToken, Project, ProjectMember, User
from stratuslab.identity.principal import Principal
from stratuslab.services.ttl_cache import TtlCache

#: rows whose change may change who a token's holder is or what they may do
_IDENTITY_ROWS = (ApiToken, User, Project, ProjectMember)
_DIRTY = "stratus_identity_changed"

#: database -> count of identity changes committed to it by this process
_generations: dict[str, int] = {}
_generation_lock = threading.Lock()


def database_of(session: Session) -> str:
    """The key of the database ``session`` talks to (its engine's URL)."""
    bind = session.get_bind()
    return str(bind.engine.url)


def generation(database: str) -> int:
    """Bumped by every identity change this process commits to ``database``."""
    return _generations.get(database, 0)


def identity_changed(database: str) -> None:
    """Make every cached principal of ``database`` stale."""
    with _generation_lock:
        _generations[database] = _generations.get(database, 0) + 1


def _after_flush(session: Session, _context: Any) -> None:
    changed = (*session.new, *session.dirty, *session.deleted)
    if any(isinstance(obj, _IDENTITY_ROWS) for obj in changed):
        session.info[_DIRTY] = True


def _after_bulk(state: Any) -> None:
    if (state.is_update or state.is_delete) and any(
        mapper.class_ in _IDENTITY_ROWS for mapper in state.all_mappers
    ):
        state.session.info[_DIRTY] = True


def _after_commit(session: Session) -> None:
    if session.info.pop(_DIRTY, False):
        identity_changed(database_of(session))


def _after_rollback(session: Session) -> None:
    session.info.pop(_DIRTY, None)


_watching = False


def watch() -> None:
    """Hook every session of this process (idempotent)."""
    global _watching
    with _generation_lock:
        if _watching:
            return
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "do_orm_execute", _after_bulk)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", lambda s, _t: _after_rollback(s))
        _watching = True


class PrincipalCache:
    """(token, requested project) -> principal, for ``ttl`` seconds (0: no caching)."""

    def __init__(self, ttl: float = 10.0, size: int = 100_000) -> None:
        #: key -> (database, its generation when looked up, token expiry, principal)
        self._entries: TtlCache[
            tuple[str, str | None], tuple[str, int, datetime | None, Principal]
        ] = TtlCache(ttl, size)
        watch()

    @property
    def ttl(self) -> float:
        return self._entries.ttl

    @ttl.setter
    def ttl(self, seconds: float) -> None:
        self._entries.ttl = seconds

    @staticmethod
    def _key(token: str, project: str | None) -> tuple[str, str | None]:
        return hashlib.sha256(token.encode()).hexdigest(), project

    def get(self, token: str, project: str | None, *, now: datetime) -> Principal | None:
        found = self._entries.get(self._key(token, project), now=time.monotonic())
        if found is None:
            return None
        database, gen, expires, principal = found
        if gen != generation(database):
            return None
        if expires is not None and now >= expires:
            return None
        return principal

    def put(
        self,
        token: str,
        project: str | None,
        principal: Principal,
        *,
        expires: datetime | None,
        database: str,
        since: int,
    ) -> None:
        """Keep ``principal``, looked up in ``database`` while its identity generation was
        ``since`` (an entry looked up before a change committed is stale at once)."""
        value = (database, since, expires, principal)
        self._entries.put(self._key(token, project), value, now=time.monotonic())
