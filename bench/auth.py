"""Authentication overhead per request: API tokens against SQLite, JWT verification, argon2.

(a) token: parse ``stl_<id>_<secret>``, one indexed SELECT of the token row joined with its
    user, one SELECT of the user's project roles, SHA-256 + constant-time compare, build
    the Principal; against a SQLite file holding 10,000 tokens, a pooled connection per
    request (as the API does). Target: median <= 2 ms.
(b) JWT: RS256 and ES256 bearer tokens verified with cached JWKS keys (claims, groups and
    scopes included).
(c) password: one argon2id verification with the default parameters (a login, not a
    per-request cost; shown for scale).

    .venv/bin/python bench/auth.py [--tokens 10000] [--requests 3000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
)

from stratuslab.db.models import TZDateTime
from stratuslab.identity.oidc import GroupRule, IssuerConfig, JwksCache, OidcVerifier
from stratuslab.identity.passwords import Passwords
from stratuslab.identity.principal import Principal
from stratuslab.identity.scopes import parse_scopes
from stratuslab.identity.tokens import TokenRecord, authenticate_token, mint, principal_for
from stratuslab.types import Role
from tests.identity_pki import Issuer

TARGET_MS = 2.0
metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("cloud_admin", Boolean, nullable=False),
)
tokens = Table(
    "api_tokens",
    metadata,
    Column("token_id", String(12), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("user_id", String(36), nullable=False, index=True),
    Column("project_id", String(36), nullable=False),
    Column("scopes", String(400), nullable=True),
    Column("expires_at", TZDateTime(), nullable=True),
    Column("revoked_at", TZDateTime(), nullable=True),
)
members = Table(
    "project_members",
    metadata,
    Column("user_id", String(36), primary_key=True),
    Column("project_id", String(36), primary_key=True),
    Column("role", String(16), nullable=False),
)


def build_token_db(path: Path, count: int) -> tuple[Engine, list[str]]:
    """A SQLite file with ``count`` tokens (one user each, in one of 50 projects)."""
    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    issued: list[str] = []
    user_rows, token_rows, member_rows = [], [], []
    for i in range(count):
        minted = mint()
        issued.append(minted.token)
        user_id, project_id = f"u-{i}", f"p-{i % 50}"
        user_rows.append({"id": user_id, "cloud_admin": i == 0})
        member_rows.append({"user_id": user_id, "project_id": project_id, "role": "member"})
        token_rows.append(
            {
                "token_id": minted.token_id,
                "secret_hash": minted.secret_hash,
                "user_id": user_id,
                "project_id": project_id,
                "scopes": "compute:write images:read" if i % 2 else None,
                "expires_at": None,
                "revoked_at": None,
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(users), user_rows)
        conn.execute(insert(tokens), token_rows)
        conn.execute(insert(members), member_rows)
    return engine, issued


def authenticate_via_db(engine: Engine, token: str, *, now: datetime) -> Principal:
    """What ``get_principal`` will do for an ``stl_`` token."""
    with engine.connect() as conn:
        admin_by_token: dict[str, bool] = {}

        def lookup(token_id: str) -> TokenRecord | None:
            row = conn.execute(
                select(tokens, users.c.cloud_admin)
                .join(users, users.c.id == tokens.c.user_id)
                .where(tokens.c.token_id == token_id)
            ).first()
            if row is None:
                return None
            admin_by_token[token_id] = row.cloud_admin
            return TokenRecord(
                token_id=row.token_id,
                secret_hash=row.secret_hash,
                user_id=row.user_id,
                project_id=row.project_id,
                scopes=None if row.scopes is None else parse_scopes(row.scopes),
                expires_at=row.expires_at,
                revoked_at=row.revoked_at,
            )

        record = authenticate_token(token, lookup, now=now)
        roles = {
            r.project_id: Role(r.role)
            for r in conn.execute(
                select(members.c.project_id, members.c.role).where(
                    members.c.user_id == record.user_id
                )
            )
        }
        return principal_for(record, roles=roles, cloud_admin=admin_by_token[record.token_id])


def timed(call: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(name: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    median = statistics.median(ordered)
    print(f"{name:<38} median {median:8.3f} ms   p99 {p99:8.3f} ms   (n={len(samples)})")
    return median


def bench_tokens(count: int, requests: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine, issued = build_token_db(Path(tmp) / "tokens.db", count)
        now = datetime.now(UTC)
        rng = random.Random(1)
        authenticate_via_db(engine, issued[0], now=now)  # warm the pool
        samples = timed(lambda: authenticate_via_db(engine, rng.choice(issued), now=now), requests)
        engine.dispose()
    return summary(f"token auth ({count} tokens, SQLite)", samples)


def bench_jwt(requests: int) -> None:
    issuer = Issuer()
    config = IssuerConfig(
        issuer=issuer.url,
        audiences=(issuer.audience,),
        jwks_uri=issuer.url + "jwks",
        groups={"/atlas": GroupRule("atlas", Role.MEMBER)},
    )
    verifier = OidcVerifier([config], JwksCache(lambda url: issuer.jwks()))
    now = datetime.now(UTC)
    for alg in ("RS256", "ES256"):
        token = issuer.token(alg=alg)
        verifier.verify(token, now=now)
        summary(
            f"JWT {alg} (cached JWKS)", timed(partial(verifier.verify, token, now=now), requests)
        )


def bench_password(runs: int) -> None:
    passwords = Passwords()
    stored = passwords.hash("a reasonable passphrase")
    summary(
        "password (argon2id 64 MiB, t=3, p=4)", timed(lambda: passwords.verify(stored, "x"), runs)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=3_000)
    parser.add_argument("--password-runs", type=int, default=10)
    args = parser.parse_args()
    median = bench_tokens(args.tokens, args.requests)
    bench_jwt(args.requests)
    bench_password(args.password_runs)
    verdict = "PASS" if median <= TARGET_MS else "FAIL"
    print(f"token auth target: median <= {TARGET_MS} ms: {verdict}")
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
