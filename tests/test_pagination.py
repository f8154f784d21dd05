"""Keyset pages of every list (store.pagination, api.pagination), on SQLite and PostgreSQL.

Rows are written through the store with chosen creation times (ties included: a page
boundary inside a tie must neither repeat nor drop a row); the lists are read through the
API, following their Link headers. No Prefect server: these lists never ask Prefect (the
runs are final)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from store.db import ExecutionRow, Workflow
from store.errors import Invalid
from store.pagination import Cursor, decode_cursor
from store.queries import NodeOutcome
from tests.manage_support import api_client, every_page, next_link, scratch_postgres

pytestmark = pytest.mark.services  # PostgreSQL

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def api(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"pages-{request.param}")
    if request.param == "sqlite":
        async with api_client(f"sqlite+aiosqlite:///{home / 'store.db'}", home, "pages") as client:
            yield client
    else:
        async with scratch_postgres("fm_pages") as url, api_client(url, home, "pages") as client:
            yield client


async def runs_at(api, workflow_id: str, moments: list[datetime], *, owner: str | None = None, **fields) -> list[str]:
    """Runs of ``workflow_id`` created at ``moments`` (final: the list asks Prefect nothing)."""
    executions = api.app.state.runs.executions
    ids = []
    for moment in moments:
        run_id = str(uuid.uuid4())
        await executions.record_start(
            execution_id=run_id,
            owner=owner or api.owner,
            workflow_id=workflow_id,
            version=1,
            workflow_name="w",
            inputs={},
            trigger={"type": fields.get("trigger", "api")},
            status=fields.get("status", "completed"),
        )
        async with api.app.state.sessions() as session:
            await session.execute(update(ExecutionRow).where(ExecutionRow.id == run_id).values(created_at=moment))
            await session.commit()
        ids.append(run_id)
    return ids


async def test_runs_page_newest_first_through_ties_with_a_next_link_until_the_last(api):
    workflow_id = str(uuid.uuid4())
    # 23 runs; the 3rd to 7th newest share one creation time, across a page boundary.
    moments = [T0 + timedelta(minutes=i) for i in range(18)] + [T0 + timedelta(minutes=30)] * 5
    ids = await runs_at(api, workflow_id, moments)
    await runs_at(api, workflow_id, [T0 + timedelta(minutes=40)], owner="somebody-else")
    expected = [i for _, i in sorted(zip(moments, ids, strict=True), reverse=True)]

    pages = await every_page(api, "/api/executions", workflow_id=workflow_id, limit=5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [run["id"] for page in pages for run in page] == expected
    # Without limit: 50 at most, here all of them on one page with no Link.
    whole = await api.get("/api/executions", params={"workflow_id": workflow_id})
    assert [r["id"] for r in whole.json()] == expected and next_link(whole) is None
    # The Link keeps the filters.
    first = await api.get("/api/executions", params={"workflow_id": workflow_id, "limit": 5, "trigger": "api"})
    link = next_link(first)
    assert link is not None and link.startswith("/api/executions?") and f"workflow_id={workflow_id}" in link
    assert "trigger=api" in link and "limit=5" in link


async def test_runs_filter_by_time_status_and_trigger(api):
    workflow_id = str(uuid.uuid4())
    early = await runs_at(api, workflow_id, [T0, T0 + timedelta(hours=1)])
    failed = await runs_at(api, workflow_id, [T0 + timedelta(hours=2)], status="failed", trigger="webhook")
    late = await runs_at(api, workflow_id, [T0 + timedelta(hours=3)], trigger="schedule")

    async def ids(**params) -> list[str]:
        pages = await every_page(api, "/api/executions", workflow_id=workflow_id, limit=1, **params)
        return [run["id"] for page in pages for run in page]

    # since is inclusive, until exclusive; an offset is honoured (09:00+01:00 is 08:00 UTC)
    assert await ids(since="2026-11-01T09:00:00+01:00", until="2026-11-01T09:00:00Z") == early[:1]
    assert await ids(since="2026-11-01T08:00:00Z", until="2026-11-01T10:00:00Z") == early[::-1]
    assert await ids(since="2026-11-01T10:00:00Z") == late + failed
    assert await ids(status="failed") == failed
    assert await ids(trigger="schedule") == late
    assert await ids(trigger="webhook", status="failed") == failed
    assert await ids(status="completed", since="2026-11-01T09:30:00Z") == late


async def test_bad_limits_cursors_and_filters_are_422_naming_the_parameter(api):
    for path in ("/api/workflows", "/api/executions", "/api/dead-letters", "/api/credentials", "/api/audit"):
        for params, field in (
            ({"limit": 501}, "query.limit"),
            ({"limit": 0}, "query.limit"),
            ({"limit": "ten"}, "query.limit"),
            ({"cursor": "not-a-cursor"}, "query.cursor"),
            ({"cursor": "W10"}, "query.cursor"),  # base64 of "[]": JSON, not ours
        ):
            answer = await api.get(path, params=params)
            assert answer.status_code == 422, (path, params, answer.text)
            assert answer.json()["issues"][0]["field"] == field, (path, params, answer.json())
    assert (await api.get("/api/executions", params={"limit": 500})).status_code == 200
    for params, field in (
        ({"since": "yesterday"}, "query.since"),
        ({"until": "2026-11-01"}, "query.until"),  # a date without a time is no RFC 3339 date-time
        ({"status": "sleeping"}, "query.status"),
        ({"trigger": "email"}, "query.trigger"),
    ):
        answer = await api.get("/api/executions", params=params)
        assert answer.status_code == 422 and answer.json()["issues"][0]["field"] == field, answer.text
    answer = await api.get("/api/workflows", params={"status": "deleted"})
    assert answer.status_code == 422 and answer.json()["issues"][0]["field"] == "query.status"
    # PostgreSQL refuses NUL in text: refused here, naming the parameter, on both databases.
    for path, name in (
        ("/api/workflows", "q"),
        ("/api/workflows", "tag"),
        ("/api/executions", "workflow_id"),
        ("/api/audit", "target_id"),
    ):
        answer = await api.get(path, params={name: "a\x00b"})
        assert answer.status_code == 422 and answer.json()["issues"][0]["field"] == f"query.{name}", answer.text
    forged = Cursor("2026-11-01T08:00:00+00:00", "id\x00").encode()
    answer = await api.get("/api/executions", params={"cursor": forged})
    assert answer.status_code == 422 and answer.json()["issues"][0]["field"] == "query.cursor", answer.text


def test_a_cursor_of_another_list_is_refused():
    by_name = Cursor("alpha", str(uuid.uuid4())).encode()
    with pytest.raises(Invalid) as refused:
        decode_cursor(by_name)  # a time-ordered list given a name-ordered list's cursor
    assert refused.value.issues[0]["field"] == "query.cursor"
    moment = T0 + timedelta(microseconds=123456)
    assert decode_cursor(Cursor(moment, "x").encode()) == Cursor(moment, "x")


async def test_workflows_page_and_filter_by_words_tag_and_status(api):
    store, catalog = api.app.state.runs.workflows, api.app.state.catalog
    from store.workflow_meta import MetaChange

    made = []
    for i in range(7):
        saved = await store.create(api.owner, f"Report {i} {uuid.uuid4().hex[:6]}", {"nodes": []}, "h")
        made.append(saved.workflow_id)
    await store.create("somebody-else", "Report of another", {"nodes": []}, "h")
    await catalog.change(api.owner, made[1], MetaChange(description="Sends the 100% weekly DIGEST"), actor="t")
    await catalog.change(api.owner, made[2], MetaChange(tags=["finance", "weekly"], status="draft"), actor="t")
    await catalog.change(api.owner, made[3], MetaChange(tags=["weekly"], status="archived"), actor="t")
    # Made in this order, some in the same instant: the page order is (created_at, id).
    async with api.app.state.sessions() as session:
        for workflow_id in made[4:]:
            await session.execute(update(Workflow).where(Workflow.id == workflow_id).values(created_at=T0))
        await session.commit()

    pages = await every_page(api, "/api/workflows", limit=3)
    listed = [w["id"] for page in pages for w in page]
    assert sorted(listed) == sorted(made) and len(listed) == len(set(listed)) == 7
    assert listed[:3] == sorted(made[4:])  # the oldest first, ties by id
    assert listed[3:] == made[:4]

    async def ids(**params) -> list[str]:
        return [w["id"] for page in await every_page(api, "/api/workflows", limit=2, **params) for w in page]

    assert await ids(q="digest") == [made[1]]  # the description, in any case
    assert await ids(q="100%") == [made[1]]  # % is a character, not a wildcard
    assert await ids(q="_") == []
    assert await ids(tag="weekly") == [made[2], made[3]]
    assert await ids(tag="finance", status="draft") == [made[2]]
    assert await ids(status="archived") == [made[3]]
    assert len(await ids(status="active")) == 5
    assert await ids(q="report", status="draft") == [made[2]]
    [draft] = (await api.get("/api/workflows", params={"tag": "finance"})).json()
    assert (draft["tags"], draft["status"], draft["description"]) == (["finance", "weekly"], "draft", "")


async def test_dead_letters_credentials_and_audit_page_too(api):
    outcomes = api.app.state.runs.outcomes
    workflow_id = str(uuid.uuid4())
    for i in range(5):
        failed = NodeOutcome(f"n{i}", (), "k", "failed", {"error": {"message": "boom"}}, 1, True, T0, T0)
        await outcomes.save(str(uuid.uuid4()), [failed], workflow_id=workflow_id, owner=api.owner)
    letters = await every_page(api, "/api/dead-letters", workflow_id=workflow_id, limit=2)
    assert [len(p) for p in letters] == [2, 2, 1]  # all failed at the same instant: ordered by id
    assert len({letter["id"] for page in letters for letter in page}) == 5

    names = [f"cred-{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
    for name in names:
        made = await api.post("/api/credentials", json={"name": name, "type": "bearer", "data": {"token": "t0ken-x"}})
        assert made.status_code == 201, made.text
    credentials = await every_page(api, "/api/credentials", limit=3)
    listed = [c["name"] for page in credentials for c in page]
    assert [name for name in listed if name in names] == sorted(names)  # by name

    entries = await every_page(api, "/api/audit", action="credential.create", limit=3)
    assert [len(p) for p in entries] == [3, 1]
    created = [e["details"]["name"] for page in entries for e in page]
    assert [n for n in created if n in names] == list(reversed(names))  # newest first
    assert "t0ken-x" not in str(entries)
