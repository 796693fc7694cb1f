"""Root-disk provisioning from cached bases, and marketplace search latency, in one run.

(a) provisioning: the node's image cache holds a 1 GiB and a 10 GiB raw base (sparse files
    with some data, placed in the cache's layout); one provisioning is ``ImageCache.ensure``
    (a hit) plus the qcow2 overlay the workspace creates on it. Target: <= 50 ms at both
    sizes (independent of size). Baseline in the same run: a full copy of the base with
    ``cp --sparse=never --reflink=never``.
(b) search: 10,000 entries (20 endorsers, mixed os/arch/tags, some deprecated and expired)
    in a marketplace on SQLite, and on PostgreSQL too when STRATUS_TEST_POSTGRES_URL is set;
    ``GET /marketplace/entries`` with several filters through the ASGI app. Target: p50 <= 20
    ms.

    .venv/bin/python bench/image_cache.py [--runs 20] [--baseline-runs 1] [--entries 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient
from sqlalchemy import text

from stratuslab.agent.image_cache import ImageCache
from stratuslab.agent.workspace import _overlay
from stratuslab.db.session import transaction
from stratuslab.marketplace import service
from stratuslab.marketplace.app import build_context, create_marketplace_app
from stratuslab.marketplace.context import MarketplaceContext, MarketplaceSettings
from stratuslab.marketplace.ids import identifier_from_sha1
from stratuslab.marketplace.metadata import Endorser, canonical_bytes, validate_metadata
from stratuslab.marketplace.store import SearchFilter
from stratuslab.marketplace.verify import VerifiedEntry
from stratuslab.schemas.agent import ImageRef

GiB = 1 << 30
TARGET_PROVISION = 0.050
TARGET_SEARCH = 0.020
OSES = ["debian", "ubuntu", "centos", "almalinux", "fedora", "rocky", "opensuse", "alpine"]
ARCHES = ["x86_64", "x86_64", "x86_64", "aarch64"]


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered), p90


def report(label: str, values: list[float], target: float | None = None) -> float:
    median, p90 = stats(values)
    verdict = ""
    if target is not None:
        verdict = "  ok" if median <= target else f"  OVER TARGET {target * 1000:.0f} ms"
    print(
        f"  {label:<46} p50 {median * 1000:9.2f} ms   p90 {p90 * 1000:9.2f} ms"
        f"  (n={len(values)}){verdict}"
    )
    return median


def timed(action: Callable[[], object], runs: int) -> list[float]:
    values = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        values.append(time.perf_counter() - start)
    return values


# -- (a) provisioning ----------------------------------------------------------------------


def cached_base(cache: ImageCache, size: int) -> ImageRef:
    """A sparse raw base placed where the cache keeps it, as if fetched earlier."""
    digest = hashlib.sha256(f"bench-{size}".encode()).hexdigest()
    ref = ImageRef(id=f"bench-{size}", sha256=digest, format="raw", size_bytes=size)
    path = cache.path_for(ref)
    with path.open("wb") as out:
        out.write(os.urandom(16 << 20))  # a boot sector and some files' worth of data
        out.truncate(size)
    path.chmod(0o644)
    return ref


def provisioning(work: Path, runs: int, baseline_runs: int) -> bool:
    print("(a) root disk from a cached base: ensure (hit) + qcow2 overlay vs full copy")
    cache = ImageCache(work / "images", None)
    results = [provision_case(cache, work, gib, runs, baseline_runs) for gib in (1, 10)]
    return all(results)


def provision_case(cache: ImageCache, work: Path, gib: int, runs: int, baseline_runs: int) -> bool:
    ref = cached_base(cache, gib * GiB)
    base = cache.path_for(ref)
    counter = iter(range(10**6))

    def provision() -> None:
        found = cache.ensure(ref)
        _overlay(found, ref.format, work / f"root-{gib}-{next(counter)}.qcow2")

    def full_copy() -> None:
        dest = work / f"copy-{gib}-{next(counter)}.raw"
        subprocess.run(
            ["cp", "--sparse=never", "--reflink=never", str(base), str(dest)], check=True
        )
        dest.unlink()

    median = report(f"{gib:>2} GiB base: overlay", timed(provision, runs), TARGET_PROVISION)
    report(f"{gib:>2} GiB base: cp --sparse=never (baseline)", timed(full_copy, baseline_runs))
    for overlay in work.glob(f"root-{gib}-*.qcow2"):
        overlay.unlink()
    base.unlink()
    return median <= TARGET_PROVISION


# -- (b) search ----------------------------------------------------------------------------


def fill(mp: MarketplaceContext, count: int) -> None:
    rng = random.Random(42)
    now = datetime.now(UTC).replace(microsecond=0)
    endorsers = [
        Endorser(
            email=f"endorser{i}@example.org",
            subject=f"/DC=org/DC=example/CN=Endorser {i}",
            issuer="/DC=org/DC=example/CN=Bench CA",
        )
        for i in range(20)
    ]
    batch: list[VerifiedEntry] = []
    for n in range(count):
        os_name = rng.choice(OSES)
        sha1 = hashlib.sha1(f"image-{n}".encode()).hexdigest()
        created = now - timedelta(days=rng.randint(1, 300), seconds=n)
        document = {
            "identifier": identifier_from_sha1(sha1),
            "bytes": rng.randint(1, 20) * GiB,
            "checksums": {"sha1": sha1, "sha256": hashlib.sha256(sha1.encode()).hexdigest()},
            "format": rng.choice(["qcow2", "raw"]),
            "os": os_name,
            "os_version": str(rng.randint(7, 24)),
            "os_arch": rng.choice(ARCHES),
            "title": f"{os_name} appliance {n}",
            "description": f"A {os_name} image with {rng.choice(['root', 'grid', 'hpc'])} tools",
            "created": created,
            "valid_until": created + timedelta(days=rng.choice([30, 400, 400, 400])),
            "tags": [f"{os_name}-{rng.randint(1, 5)}"],
            "deprecated": "superseded" if rng.random() < 0.1 else None,
            "endorser": rng.choice(endorsers),
        }
        meta = validate_metadata({k: v for k, v in document.items() if v is not None})
        assert meta.endorser is not None
        batch.append(VerifiedEntry(meta, meta.endorser, canonical_bytes(meta), b"bench", ()))
        if len(batch) == 500 or n == count - 1:
            with transaction(mp.sessions) as session:
                for verified in batch:
                    service.store_verified(session, verified, now=now)
            batch.clear()


QUERIES = {
    "no filter (valid, first page)": {},
    "os=ubuntu": {"os": "ubuntu"},
    "os=debian arch=aarch64": {"os": "debian", "arch": "aarch64"},
    "tag=fedora-3": {"tag": "fedora-3"},
    "endorser=endorser7@example.org": {"endorser": "endorser7@example.org"},
    "q=hpc (free text)": {"q": "hpc"},
    "status=all offset=5000": {"status": "all", "offset": "5000"},
    "status=deprecated": {"status": "deprecated"},
}


def search(label: str, url: str, work: Path, count: int, runs: int) -> bool:
    print(f"(b) search, {count} entries, {label}")
    settings = MarketplaceSettings(data_dir=work / f"mp-{label}", database_url=url)
    mp = build_context(settings)
    try:
        start = time.perf_counter()
        fill(mp, count)
        print(f"  (filled in {time.perf_counter() - start:.1f} s)")
        with transaction(mp.sessions) as session:  # planner statistics, as a live site has
            session.execute(text("ANALYZE"))
        ok = queries(mp, settings, runs)
    finally:
        mp.close()
    return ok


def queries(mp: MarketplaceContext, settings: MarketplaceSettings, runs: int) -> bool:
    ok = True
    with TestClient(create_marketplace_app(settings, context=mp)) as client:
        for name, params in QUERIES.items():

            def query(params: dict[str, str] = params) -> None:
                client.get("/marketplace/entries", params=params).raise_for_status()

            query()
            ok &= report(f"GET {name}", timed(query, runs), TARGET_SEARCH) <= TARGET_SEARCH

    def direct() -> None:
        with mp.sessions() as session:
            service.search(session, SearchFilter(os="ubuntu"), now=datetime.now(UTC))

    report("service.search os=ubuntu (no HTTP)", timed(direct, runs))
    return ok


@contextmanager
def postgres_database() -> Iterator[str | None]:
    admin = os.environ.get("STRATUS_TEST_POSTGRES_URL", "")
    if not admin:
        yield None
        return
    import psycopg

    name = f"stratus_bench_{uuid.uuid4().hex[:8]}"
    plain = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline-runs", type=int, default=1)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--only", choices=["provisioning", "search"], default=None)
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(dir=args.work_dir, prefix="bench-cache-") as tmp:
        work = Path(tmp)
        if args.only in (None, "provisioning"):
            ok &= provisioning(work, args.runs, args.baseline_runs)
        if args.only in (None, "search"):
            sqlite = f"sqlite:///{work / 'search.db'}"
            ok &= search("SQLite", sqlite, work, args.entries, args.runs)
            with postgres_database() as url:
                if url is None:
                    print("(b) PostgreSQL: skipped (STRATUS_TEST_POSTGRES_URL is not set)")
                else:
                    ok &= search("PostgreSQL", url, work, args.entries, args.runs)
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
