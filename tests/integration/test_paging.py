"""Instance lists paged by key (cursor), read-only sessions, and cached node credentials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from stratuslab.db.models import Image, Instance, Project, User
from stratuslab.db.session import read_session
from stratuslab.services.context import Ctx


def _instances(ctx: Ctx, n: int, *, same_time: bool = False) -> list[str]:
    """``n`` pending instances of the admin's project, created a second apart (or all at
    the same instant, so only the id orders them)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with ctx.uow() as s:
        admin = s.scalars(select(User).where(User.name == "admin")).one()
        image = Image(
            name="base",
            format="qcow2",
            sha256="0" * 64,
            path="/nonexistent",
            owner_id=admin.id,
            project_id=admin.default_project_id,
        )
        s.add(image)
        s.flush()
        rows = [
            Instance(
                name=f"vm-{i:03d}",
                image_id=image.id,
                flavor_name="t1.micro",
                vcpus=1,
                memory_mib=128,
                spec={},
                owner_id=admin.id,
                project_id=admin.default_project_id,
                created_at=start if same_time else start + timedelta(seconds=i),
            )
            for i in range(n)
        ]
        s.add_all(rows)
        s.flush()
        return [r.id for r in sorted(rows, key=lambda r: (r.created_at, r.id))]


def _walk(api: TestClient, limit: int) -> tuple[list[str], list[dict[str, object]]]:
    ids: list[str] = []
    pages = []
    params: dict[str, str | int] = {"limit": limit}
    while True:
        resp = api.get("/api/v1/instances", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        pages.append(page)
        ids += [i["id"] for i in page["items"]]
        if not page["next_cursor"]:
            return ids, pages
        params = {"limit": limit, "cursor": page["next_cursor"]}


def test_cursor_pages_walk_every_instance_once_in_order(api: TestClient, ctx: Ctx) -> None:
    expected = _instances(ctx, 23)
    ids, pages = _walk(api, 5)
    assert ids == expected
    assert [len(p["items"]) for p in pages] == [5, 5, 5, 5, 3]  # type: ignore[arg-type]
    # the first page is counted, the pages after a cursor are not (unless asked for)
    assert pages[0]["total"] == 23
    assert all(p["total"] is None for p in pages[1:])
    cursor = pages[1]["next_cursor"]
    counted = api.get("/api/v1/instances", params={"cursor": cursor, "count": "true"}).json()
    assert counted["total"] == 23
    assert [i["id"] for i in counted["items"]] == expected[10:]
    # offset paging still works and agrees
    by_offset = api.get("/api/v1/instances", params={"limit": 5, "offset": 10}).json()
    assert [i["id"] for i in by_offset["items"]] == expected[10:15]


def test_cursor_pages_break_ties_by_id(api: TestClient, ctx: Ctx) -> None:
    expected = _instances(ctx, 7, same_time=True)
    assert _walk(api, 2)[0] == expected


def test_a_page_that_fills_the_limit_has_a_cursor_the_last_has_none(
    api: TestClient, ctx: Ctx
) -> None:
    _instances(ctx, 4)
    ids, pages = _walk(api, 2)
    assert len(ids) == 4
    assert [len(p["items"]) for p in pages] == [2, 2, 0]  # type: ignore[arg-type]


def test_a_bad_cursor_is_refused(api: TestClient) -> None:
    for cursor in ("not-a-cursor", "bm9waXBl", ""):
        resp = api.get("/api/v1/instances", params={"cursor": cursor or "=="})
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["code"] == "invalid_cursor"


def test_read_session_reads_while_a_writer_holds_the_lock(ctx: Ctx) -> None:
    writer = ctx.sessions()
    try:
        writer.add(Project(name="someone"))
        writer.flush()  # SQLite: the write lock is held until commit
        with read_session(ctx.sessions) as s:
            names = set(s.scalars(select(Project.name)))
        assert "someone" not in names  # a snapshot from before the writer's commit
    finally:
        writer.rollback()
        writer.close()
