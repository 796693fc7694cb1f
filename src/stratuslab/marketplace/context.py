"""What the marketplace API needs: settings, sessions, the trust store and a clock.

Built by :func:`stratuslab.marketplace.app.build_context` (standalone) or by the controller,
and found by the router through :func:`stratuslab.marketplace.api.get_marketplace`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from stratuslab.errors import ServiceUnavailable
from stratuslab.marketplace.truststore import TrustStore, TrustStoreCache

DEFAULT_PORT = 8771
DEFAULT_MAX_UPLOAD = 256 * 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class MarketplaceSettings:
    data_dir: Path
    database_url: str | None = None
    trust_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    max_clock_skew: timedelta = timedelta(minutes=5)
    require_crls: bool = False

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'marketplace.db'}"


@dataclass
class MarketplaceContext:
    settings: MarketplaceSettings
    sessions: sessionmaker[Session]
    trust_cache: TrustStoreCache | None = None
    clock: Callable[[], datetime] = field(default=utcnow)

    def trust(self) -> TrustStore:
        """The current trust store; uploads are refused when none is configured."""
        if self.trust_cache is None:
            raise ServiceUnavailable(
                "this marketplace has no trust store, so it cannot verify uploads",
                hint="start it with --trust-dir DIR (e.g. /etc/grid-security/certificates)",
            )
        return self.trust_cache.get()

    def close(self) -> None:
        bind = self.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()
