"""The debugging loop on a real worker (in this process) with the API, a PostgreSQL store,
the session's Prefect server and a counting local HTTP server: node executions with paths,
inputs, outputs and logs; a rerun from a node calls nothing upstream again and everything
downstream once, takes pinned outputs, reruns a loop from a body node; 409 and 422; a test
of one node with a pinned upstream output, nothing else called.

Every test uses request paths of its own on the counting server, so counts do not mix."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from functools import partial
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from api.app import create_app
from api.settings import ApiSettings
from cli.main import app as cli
from tests.processes import free_port
from tests.support import canvas, node, save, wait_execution
from tests.support import wait_final as _wait_final

wait_final = partial(_wait_final, timeout=120)

pytestmark = pytest.mark.prefect

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
OWNER = f"dev-{uuid.uuid4().hex}"
KEY = f"key-{OWNER}"
SECRET = "sk-debugging-" + uuid.uuid4().hex
"""A key written into a node's headers: its input is listed with it redacted."""


@pytest.fixture(scope="module")
async def stack(prefect_server, in_process_workers):
    from store.db import upgrade_schema

    name = f"fm_debugging_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    pool = f"debugging-{uuid.uuid4().hex[:6]}"
    await upgrade_schema(url)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLOWMAESTRO_HTTP_ALLOW_HOSTS", "127.0.0.1")  # the counting server
        await in_process_workers.start(url, pool)
        yield url, pool
        await in_process_workers.stop_all()  # before its database goes
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="module")
async def api(stack, tmp_path_factory):
    url, pool = stack
    settings = ApiSettings(
        database_url=url, api_keys=f"{OWNER}:{KEY}", home=tmp_path_factory.mktemp("debugging"), work_pool=pool
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=90,
        ) as client:
            yield client


def http(node_id: str, url: str, **data: Any) -> dict[str, Any]:
    return node(node_id, "http", data={"url": url, **data})


def chain(counting, prefix: str) -> dict[str, Any]:
    """start -> a -> b -> c -> end, each of a, b, c one request; c sends b's count."""
    return canvas(
        [
            node("start", "start"),
            http("a", f"{counting.url}/{prefix}/a", headers={"X-Api-Key": SECRET}),
            http("b", f"{counting.url}/{prefix}/b"),
            http("c", f"{counting.url}/{prefix}/c", query={"from_b": "{{ b.body.count }}"}),
            node("end", "end", data={"output": {"c": "{{ c.body.count }}", "b": "{{ b.body.count }}"}}),
        ],
        [("start", "a"), ("a", "b"), ("b", "c"), ("c", "end")],
        name=f"chain-{prefix}",
    )


def counts(counting, prefix: str) -> dict[str, int]:
    return {path.rsplit("/", 1)[1]: n for path, n in counting.counts.items() if path.startswith(f"/{prefix}/")}


async def execute(api, workflow_id: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    started = await api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": inputs or {}})
    assert started.status_code == 202, started.text
    return await wait_final(api, started.json()["execution_id"])


async def rerun(api, execution_id: str, **body: Any) -> dict[str, Any]:
    answer = await api.post(f"/api/executions/{execution_id}/rerun", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "pending"
    return await wait_final(api, answer.json()["execution_id"])


async def node_executions(api, execution_id: str, **query: Any) -> list[dict[str, Any]]:
    answer = await api.get(f"/api/executions/{execution_id}/nodes", params=query)
    assert answer.status_code == 200, answer.text
    return answer.json()


def by_node(executions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["node_id"]: e for e in executions if not e["path"]}


async def test_rerun_from_the_middle_of_a_chain_calls_nothing_upstream_and_everything_downstream_once(api, counting):
    prefix = uuid.uuid4().hex[:8]
    workflow = await save(api, chain(counting, prefix))
    source = await execute(api, workflow["id"])
    assert source["status"] == "completed", source
    assert counts(counting, prefix) == {"a": 1, "b": 1, "c": 1}

    answer = await api.get(f"/api/executions/{source['id']}/nodes")
    assert answer.status_code == 200 and "link" not in answer.headers
    assert SECRET not in answer.text
    first = by_node(answer.json())
    assert set(first["a"]["input"]["headers"]) == {"X-Api-Key"}
    assert list(first) == ["start", "a", "b", "c", "end"]  # start order
    assert first["b"]["input"]["url"] == f"{counting.url}/{prefix}/b"
    assert first["c"]["input"]["query"] == {"from_b": 1}  # resolved against b's output
    assert first["c"]["output"]["body"] == {"path": f"/{prefix}/c", "count": 1}
    assert all(not e["restored"] and e["status"] == "completed" for e in first.values())
    assert first["a"]["duration_ms"] is not None and first["a"]["started_at"] <= first["b"]["started_at"]
    assert "completed" in first["a"]["logs"][-1]["message"]

    again = await rerun(api, source["id"], from_node="b")
    assert again["status"] == "completed", again
    assert again["id"] != source["id"]
    assert again["trigger"] == {"type": "rerun", "execution_id": source["id"], "from_node": "b"}
    assert counts(counting, prefix) == {"a": 1, "b": 2, "c": 2}
    assert again["output"] == {"c": 2, "b": 2}
    rerun_nodes = by_node(await node_executions(api, again["id"]))
    assert {n: e["restored"] for n, e in rerun_nodes.items()} == {
        "start": True,
        "a": True,
        "b": False,
        "c": False,
        "end": False,
    }
    assert rerun_nodes["a"]["output"]["body"] == {"path": f"/{prefix}/a", "count": 1}  # the source's

    # Listed among the owner's runs by its trigger.
    listed = await api.get("/api/executions", params={"trigger": "rerun", "workflow_id": workflow["id"]})
    assert listed.status_code == 200 and [r["id"] for r in listed.json()] == [again["id"]]

    # A rerun of the rerun: its restored nodes come from its own journal, nothing upstream again.
    third = await rerun(api, again["id"], from_node="c")
    assert third["status"] == "completed" and third["output"] == {"c": 3, "b": 2}
    assert counts(counting, prefix) == {"a": 1, "b": 2, "c": 3}


async def test_rerun_with_pinned_replaces_an_output_and_calls_it_not(api, counting):
    prefix = uuid.uuid4().hex[:8]
    workflow = await save(api, chain(counting, prefix))
    source = await execute(api, workflow["id"])
    assert counts(counting, prefix) == {"a": 1, "b": 1, "c": 1}

    pinned = {"status": 200, "headers": {}, "body": {"path": "pinned", "count": 41}, "url": "pinned"}
    again = await rerun(api, source["id"], from_node="b", pinned={"b": pinned})
    assert again["status"] == "completed", again
    assert counts(counting, prefix) == {"a": 1, "b": 1, "c": 2}  # b pinned: not called; c called once
    assert again["output"] == {"c": 2, "b": 41}
    listed = by_node(await node_executions(api, again["id"]))
    assert listed["b"]["restored"] is True and listed["b"]["output"] == pinned
    assert listed["c"]["input"]["query"] == {"from_b": 41}


async def test_a_failed_reruns_dead_letter_names_the_rerun_and_its_retry_completes_it(api, counting):
    """A rerun's journal has an id of its own: its dead letter still names the rerun."""
    prefix = uuid.uuid4().hex[:8]
    workflow = await save(api, chain(counting, prefix))
    source = await execute(api, workflow["id"])
    assert source["status"] == "completed", source
    counting.failing.add(f"/{prefix}/c")
    try:
        again = await rerun(api, source["id"], from_node="c")
        assert again["status"] == "failed", again
        letters = (await api.get("/api/dead-letters", params={"workflow_id": workflow["id"]})).json()
        assert [(d["execution_id"], d["node_id"]) for d in letters] == [(again["id"], "c")], letters
    finally:
        counting.failing.discard(f"/{prefix}/c")
    calls = counts(counting, prefix)
    assert calls["a"] == 1 and calls["b"] == 1 and calls["c"] == 1 + letters[0]["attempts"], (calls, letters)
    retried = await api.post(f"/api/dead-letters/{letters[0]['id']}/retry")
    assert retried.status_code == 202 and retried.json()["execution_id"] == again["id"], retried.text
    done = await wait_final(api, again["id"])
    assert done["status"] == "completed", done
    assert counts(counting, prefix) == {**calls, "c": calls["c"] + 1}  # the retry: c alone, once
    assert (await api.get("/api/dead-letters", params={"workflow_id": workflow["id"]})).json() == []


async def test_rerun_into_a_loop_body_reruns_its_container_and_lists_body_executions(api, counting):
    prefix = uuid.uuid4().hex[:8]
    raw = canvas(
        [
            node("start", "start"),
            http("before", f"{counting.url}/{prefix}/before"),
            node("lp", "loop", data={"mode": "forEach", "items": ["x", "y", "z"]}),
            node(
                "item",
                "http",
                parentId="lp",
                data={"url": f"{counting.url}/{prefix}/item", "query": {"i": "{{ loop.item }}"}},
            ),
            http("after", f"{counting.url}/{prefix}/after"),
            node("end", "end", data={"output": "{{ lp.iterations }}"}),
        ],
        [("start", "before"), ("before", "lp"), ("lp", "after"), ("after", "end")],
        name=f"loop-{prefix}",
    )
    workflow = await save(api, raw)
    source = await execute(api, workflow["id"])
    assert source["status"] == "completed", source
    assert counts(counting, prefix) == {"before": 1, "item": 3, "after": 1}

    # The body's executions, with their paths and resolved inputs, in start order.
    items = await node_executions(api, source["id"], node_id="item")
    assert [(e["path"], e["input"]["query"]) for e in items] == [
        ([0], {"i": "x"}),
        ([1], {"i": "y"}),
        ([2], {"i": "z"}),
    ]
    assert [e["output"]["body"]["count"] for e in items] == [1, 2, 3]
    assert all(e["type"] == "http" and e["status"] == "completed" and e["attempts"] == 1 for e in items)

    # Pages of two, following the Link header, give the same list as one page.
    whole = await node_executions(api, source["id"], limit=500)
    assert [(e["node_id"], e["path"]) for e in whole] == [
        ("start", []),
        ("before", []),
        ("lp", []),
        ("item", [0]),
        ("item", [1]),
        ("item", [2]),
        ("after", []),
        ("end", []),
    ]
    paged: list[dict[str, Any]] = []
    link: str | None = f"/api/executions/{source['id']}/nodes?limit=2"
    pages = 0
    while link:
        answer = await api.get(link)
        assert answer.status_code == 200, answer.text
        paged += answer.json()
        pages += 1
        header = answer.headers.get("link")
        link = header.split(">", 1)[0].lstrip("<") if header else None
        if link:
            assert header.endswith('; rel="next"')
    assert pages == 4 and paged == whole

    again = await rerun(api, source["id"], from_node="item")
    assert again["status"] == "completed" and again["output"] == 3, again
    # The whole loop ran again, and what follows it; not what precedes it.
    assert counts(counting, prefix) == {"before": 1, "item": 6, "after": 2}
    rerun_nodes = await node_executions(api, again["id"], limit=500)
    restored = {(e["node_id"], tuple(e["path"])): e["restored"] for e in rerun_nodes}
    assert restored[("before", ())] is True and restored[("lp", ())] is False
    assert [restored[("item", (i,))] for i in range(3)] == [False, False, False]

    # Filters.
    failed = await node_executions(api, source["id"], status="failed")
    assert failed == []
    assert [e["node_id"] for e in await node_executions(api, source["id"], status="completed", limit=500)] == [
        e["node_id"] for e in whole
    ]


async def test_rerun_refusals(api, counting):
    prefix = uuid.uuid4().hex[:8]
    slow = canvas(
        [node("start", "start"), http("wait", f"{counting.url}/{prefix}/wait?delay=3"), node("end", "end")],
        [("start", "wait"), ("wait", "end")],
        name=f"slow-{prefix}",
    )
    workflow = await save(api, slow)
    started = await api.post(f"/api/workflows/{workflow['id']}/execute", json={"inputs": {}})
    running = started.json()["execution_id"]
    answer = await api.post(f"/api/executions/{running}/rerun", json={"from_node": "wait"})
    assert answer.status_code == 409, answer.text
    assert "has not ended" in answer.json()["detail"]
    ended = await wait_final(api, running)
    assert ended["status"] == "completed"

    for body, field in (
        ({"from_node": "nope"}, "from_node"),
        ({"from_node": "wait", "pinned": {"ghost": 1}}, "pinned.ghost"),
        ({"from_node": "wait", "version": 7}, "version"),
    ):
        answer = await api.post(f"/api/executions/{running}/rerun", json=body)
        assert answer.status_code == 422, answer.text
        assert [i.get("field") for i in answer.json()["issues"]] == [field], answer.text
    answer = await api.post(f"/api/executions/{running}/rerun", json={})
    assert answer.status_code == 422 and "from_node" in answer.text
    answer = await api.post(f"/api/executions/{uuid.uuid4()}/rerun", json={"from_node": "wait"})
    assert answer.status_code == 404
    answer = await api.get(f"/api/executions/{running}/nodes", params={"cursor": "not-a-cursor"})
    assert answer.status_code == 422 and answer.json()["issues"][0]["field"] == "cursor"
    answer = await api.get(f"/api/executions/{running}/nodes", params={"limit": 501})
    assert answer.status_code == 422
    # Nothing was started by the refusals: the one run of the workflow and its one request.
    assert counts(counting, prefix) == {"wait": 1}
    runs = await api.get("/api/executions", params={"workflow_id": workflow["id"]})
    assert [r["id"] for r in runs.json()] == [running]


async def test_one_node_tested_with_a_pinned_upstream_output(api, counting):
    prefix = uuid.uuid4().hex[:8]
    raw = canvas(
        [
            node("start", "start"),
            http("fetch", f"{counting.url}/{prefix}/fetch"),
            node(
                "score",
                "code",
                data={
                    "language": "python",
                    "code": "def main(inputs):\n    print('saw', inputs['n'])\n    return {'double': inputs['n'] * 2}",
                    "inputs": {"n": "{{ fetch.body.count }}"},
                },
            ),
            http("notify", f"{counting.url}/{prefix}/notify", query={"v": "{{ score.double }}"}),
            node("end", "end", data={"output": "{{ notify.status }}"}),
        ],
        [("start", "fetch"), ("fetch", "score"), ("score", "notify"), ("notify", "end")],
        name=f"test-node-{prefix}",
    )
    workflow = await save(api, raw)
    answer = await api.post(
        f"/api/workflows/{workflow['id']}/nodes/score/test", json={"pinned": {"fetch": {"body": {"count": 21}}}}
    )
    assert answer.status_code == 200, answer.text
    tested = answer.json()
    assert tested["status"] == "completed", tested
    assert tested["output"] == {"double": 42}
    assert tested["error"] is None and isinstance(tested["duration_ms"], int)
    assert tested["logs"][0]["message"] == "saw 21"
    assert tested["logs"][-1]["level"] == "info" and "completed" in tested["logs"][-1]["message"]
    # Only that node executed: neither its upstream nor its downstream called anything.
    assert counts(counting, prefix) == {}
    run = await api.get(f"/api/executions/{tested['execution_id']}")
    assert run.json()["trigger"]["type"] == "test"
    listed = by_node(await node_executions(api, tested["execution_id"]))
    assert listed["score"]["restored"] is False and listed["score"]["input"]["inputs"] == {"n": 21}
    assert listed["fetch"]["restored"] is True and listed["notify"]["restored"] is True

    # An http node tested alone: its failure (after its 3 attempts) is the answer, not a 5xx.
    counting.failing.add(f"/{prefix}/notify")
    try:
        answer = await api.post(
            f"/api/workflows/{workflow['id']}/nodes/notify/test", json={"pinned": {"score": {"double": 8}}}
        )
    finally:
        counting.failing.discard(f"/{prefix}/notify")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "failed" and answer.json()["output"] is None
    assert "500" in answer.json()["error"]["message"]
    assert counts(counting, prefix) == {"notify": 3}
    failed = await node_executions(api, answer.json()["execution_id"], status="failed")
    assert [(e["node_id"], e["attempts"], e["logs"][-1]["level"]) for e in failed] == [("notify", 3, "error")]

    for path, body, field in (
        ("nodes/ghost/test", {}, "node_id"),
        ("nodes/score/test", {"pinned": {"ghost": 1}}, "pinned.ghost"),
    ):
        answer = await api.post(f"/api/workflows/{workflow['id']}/{path}", json=body)
        assert answer.status_code == 422 and answer.json()["issues"][0]["field"] == field, answer.text


@pytest.fixture(scope="module")
def api_url(stack, tmp_path_factory):
    """The same API over HTTP (uvicorn in a thread), for the command line."""
    url, pool = stack
    settings = ApiSettings(
        database_url=url, api_keys=f"{OWNER}:{KEY}", home=tmp_path_factory.mktemp("debugging-cli"), work_pool=pool
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


async def flowmaestro(api_url: str, *args: str) -> tuple[int, Any, str]:
    """The command in a thread: the worker runs on this event loop, which must not block."""
    env = {"FLOWMAESTRO_API_URL": api_url, "FLOWMAESTRO_API_KEY": KEY}
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    try:
        answer = json.loads(result.stdout) if result.stdout.strip() else None
    except ValueError:
        answer = result.stdout
    return result.exit_code, answer, result.stderr


async def test_the_command_line(api, api_url, counting):
    prefix = uuid.uuid4().hex[:8]
    workflow = await save(api, chain(counting, prefix))
    source = await execute(api, workflow["id"])

    code, listed, _ = await flowmaestro(api_url, "executions", "nodes", source["id"], "--limit", "2", "--all")
    assert code == 0 and [e["node_id"] for e in listed] == ["start", "a", "b", "c", "end"]
    code, page, more = await flowmaestro(api_url, "executions", "nodes", source["id"], "--limit", "2")
    assert code == 0 and [e["node_id"] for e in page] == ["start", "a"] and "--all" in more
    code, only, _ = await flowmaestro(api_url, "executions", "nodes", source["id"], "--node", "c")
    assert code == 0 and [(e["node_id"], e["input"]["query"]) for e in only] == [("c", {"from_b": 1})]

    code, started, _ = await flowmaestro(
        api_url, "executions", "rerun", source["id"], "--from", "c", "--pinned-json", '{"b": {"body": {"count": 7}}}'
    )
    assert code == 0 and started["status"] == "pending", started
    again = await wait_final(api, started["execution_id"])
    assert again["output"] == {"c": 2, "b": 7}
    assert counts(counting, prefix) == {"a": 1, "b": 1, "c": 2}

    code, _, stderr = await flowmaestro(api_url, "executions", "rerun", source["id"], "--from", "nope")
    assert code == 2 and "from_node" in stderr

    code, tested, _ = await flowmaestro(
        api_url, "test-node", workflow["id"], "c", "--pinned-json", '{"b": {"body": {"count": 5}}}'
    )
    assert code == 0 and tested["status"] == "completed", tested
    assert tested["output"]["body"]["count"] == 3
    assert counts(counting, prefix) == {"a": 1, "b": 1, "c": 3}
    nodes = by_node(await node_executions(api, tested["execution_id"]))
    assert nodes["c"]["input"]["query"] == {"from_b": 5}


async def test_the_store_pages_in_start_order_on_sqlite_keeps_what_ran_and_purges(tmp_path):
    """The same queries on SQLite (the default store), without a run: pages by cursor in start
    order, a restored execution does not replace the one that ran, the retention's purge."""
    from datetime import timedelta

    from store.db import make_engine, sessions, upgrade_schema
    from store.node_executions import NodeExecution, NodeExecutions
    from store.queries import NodeOutcomes, utcnow

    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_schema(url)
    engine = make_engine(url)
    try:
        database = sessions(engine)
        table, outcomes = NodeExecutions(database), NodeOutcomes(database)
        start = utcnow()

        def execution(node_id: str, offset_ms: int, path: tuple[int, ...] = (), **more: Any) -> NodeExecution:
            at = start + timedelta(milliseconds=offset_ms)
            fields: dict[str, Any] = {
                "type": "transform",
                "status": "completed",
                "attempts": 1,
                "input": {"output": node_id},
                "output": node_id,
                "error": None,
                "started_at": at,
                "ended_at": at,
                "duration_ms": 0,
            }
            fields.update(more)
            return NodeExecution(node_id=node_id, path=path, **fields)

        ran = [
            execution("a", 0),
            execution("b", 5, (1,)),
            execution("b", 5, (0,)),
            execution("c", 7),
            execution("d", 9),
        ]
        await outcomes.save("journal", [], workflow_id=None, owner=None, executions=ran, execution_id="run-1")
        # Executed again: a restored record of "a" does not replace the one that ran.
        again = [execution("a", 50, output="restored", restored=True)]
        await outcomes.save("journal", [], workflow_id=None, owner=None, executions=again, execution_id="run-1")

        seen: list[tuple[str, tuple[int, ...]]] = []
        cursor = None
        pages = 0
        while True:
            page = await table.page("run-1", limit=2, cursor=cursor)
            seen += [(e.node_id, e.path) for e in page.items]
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [("a", ()), ("b", (0,)), ("b", (1,)), ("c", ()), ("d", ())] and pages == 3
        first = (await table.page("run-1", node_id="a")).items
        assert [(e.output, e.restored) for e in first] == [("a", False)]
        assert (await table.page("other-run")).items == []

        assert await table.purge(1) == 0  # recorded just now
        assert await table.purge(-1) == 5  # a cutoff a day ahead: every one is older
        assert (await table.page("run-1")).items == []
    finally:
        await engine.dispose()


async def test_nodes_that_ended_before_an_approval_are_listed_while_it_waits(api, counting):
    prefix = uuid.uuid4().hex[:8]
    raw = canvas(
        [
            node("start", "start"),
            http("a", f"{counting.url}/{prefix}/a"),
            node("ask", "approval", data={"message": "go on?"}),
            node("done", data={"output": "{{ a.body.count }}"}),
        ],
        [("start", "a"), ("a", "ask"), ("ask", "done", "approved")],
        name=f"approval-{prefix}",
    )
    workflow = await save(api, raw)
    started = await api.post(f"/api/workflows/{workflow['id']}/execute", json={"inputs": {}})
    run_id = started.json()["execution_id"]
    await wait_execution(api, run_id, lambda body: body.get("pending_approvals"), timeout=120, what="an approval")
    waiting = by_node(await node_executions(api, run_id))
    assert list(waiting) == ["start", "a"] and waiting["a"]["output"]["body"]["count"] == 1
    answer = await api.post(f"/api/executions/{run_id}/resume", json={"node_id": "ask", "input": {"approved": True}})
    assert answer.status_code == 200, answer.text
    ended = await wait_final(api, run_id)
    assert ended["status"] == "completed", ended
    listed = by_node(await node_executions(api, run_id))
    assert list(listed) == ["start", "a", "ask", "done"]
    assert listed["a"]["restored"] is False and listed["done"]["output"] == 1
    assert counts(counting, prefix) == {"a": 1}
