"""Approvals on a real Prefect server: pause, resume from Prefect's API or ours,
refusals, timeouts that route, several pending at once, approvals inside loops."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import httpx
import pytest

from flows.approvals import pending_approvals, resume_approval
from flows.decisions import DecisionSigner
from flows.flow import workflow_flow
from tests.support import JOURNAL, canvas, node

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server", "test_handlers")]


class Started:
    """Starts a run in the background and learns its id from the first event."""

    def __init__(self, context, raw, inputs=None):
        self.events = []
        self.run_id: str | None = None
        self._ready = asyncio.Event()

        def listener(bus):
            self.run_id = bus.execution_id
            bus.subscribe(self.events.append)
            self._ready.set()

        workflow = workflow_flow(dataclasses.replace(context, listeners=(listener,)))
        self.task = asyncio.create_task(workflow(canvas=raw, inputs=inputs or {}, return_state=True))

    async def id(self) -> str:
        await asyncio.wait_for(self._ready.wait(), 60)
        return self.run_id

    async def pending(self, count: int, timeout: float = 60):
        run_id = await self.id()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = await pending_approvals(run_id)
            if len(found) >= count:
                return found
            assert asyncio.get_running_loop().time() < deadline, f"only {len(found)} approvals pending"
            await asyncio.sleep(0.2)

    async def result(self):
        state = await asyncio.wait_for(self.task, 300)  # generous: two pauses on a loaded machine
        return state, await state.result(raise_on_failure=False)


@pytest.fixture
async def start(run_context):
    """``start(raw, inputs=None)`` starts a run in the background (``Started``). A run the
    test left unfinished (it failed early) is cancelled and awaited here: none outlives its
    test, to pause or write on the session's loop during the next ones."""
    runs: list[Started] = []

    def starting(raw, inputs=None) -> Started:
        runs.append(Started(run_context, raw, inputs))
        return runs[-1]

    yield starting
    for run in runs:
        if not run.task.done():
            run.task.cancel()
        await asyncio.wait({run.task}, timeout=120)


def approval_canvas(**approval_data):
    data = {"message": "Ship {{ inputs.what }}?", "form": {"reason": {"type": "string", "required": True}}}
    data.update(approval_data)
    return canvas(
        [
            node("start", "start"),
            node("ask", "approval", data=data),
            node("ship", data={"output": "shipped because {{ ask.input.reason }}"}),
            node("drop", data={"output": "dropped"}),
            node("late", data={"output": "too late"}),
        ],
        [("start", "ask"), ("ask", "ship", "approved"), ("ask", "drop", "rejected"), ("ask", "late", "timeout")],
        inputs={"what": {"type": "string", "default": "v2"}},
    )


async def test_resume_through_prefects_own_api_like_the_ui(prefect_server, start):
    run = start(approval_canvas())
    [pending] = await run.pending(1)
    assert pending["message"] == "Ship v2?"
    assert pending["schema"]["required"] == ["approved", "reason"]
    run_id = await run.id()
    async with httpx.AsyncClient(base_url=prefect_server.api_url, timeout=30) as client:
        # The Prefect pause starts within a second of the approval when idle; a loaded
        # machine (and Prefect's SQLite) can take far longer, so wait on the state itself.
        deadline = asyncio.get_running_loop().time() + 120
        while (await client.get(f"/flow_runs/{run_id}")).json()["state"]["type"] != "PAUSED":
            assert asyncio.get_running_loop().time() < deadline, "the run never reached Paused"
            await asyncio.sleep(0.2)
        body = {"run_input": {"approved": True, "reason": "tests pass"}}
        response = await client.post(f"/flow_runs/{run_id}/resume", json=body)
        for _ in range(5):  # Prefect on SQLite answers 5xx while its database is locked
            if response.status_code < 500:
                break
            await asyncio.sleep(1)
            response = await client.post(f"/flow_runs/{run_id}/resume", json=body)
    assert response.status_code in (200, 201), response.text
    assert response.json()["status"] == "ACCEPT", response.text
    state, result = await run.result()
    assert state.is_completed()
    assert result["nodes"]["ship"]["output"] == "shipped because tests pass"
    assert result["nodes"]["ask"]["output"]["via"] == "prefect-ui"
    assert result["nodes"]["drop"]["status"] == "skipped"
    assert [e.type for e in run.events if e.type.startswith("execution:")] == [
        "execution:started",
        "execution:paused",
        "execution:resumed",
        "execution:completed",
    ]


def signer_of(context) -> DecisionSigner:
    """The decision key FlowMaestro's API and CLI sign with, as the run's process has it."""
    return DecisionSigner.from_settings(
        context.settings.decision_key, context.settings.secret_key, context.settings.home
    )


async def test_reject_through_our_resume_function(start, run_context):
    run = start(approval_canvas())
    await run.pending(1)
    # Signed, as the API and the CLI sign: unsigned, who decided would not be believed.
    answer = await resume_approval(
        await run.id(),
        "ask",
        values={"approved": False, "reason": "not yet"},
        decided_by="ada",
        signer=signer_of(run_context),
    )
    assert answer.status == "accepted", answer.message
    state, result = await run.result()
    assert result["nodes"]["drop"]["status"] == "completed"
    assert result["nodes"]["ask"]["output"]["approved"] is False
    assert result["nodes"]["ask"]["output"]["input"] == {"reason": "not yet"}
    assert result["nodes"]["ask"]["output"]["decided_by"] == "ada"
    assert result["nodes"]["ask"]["output"]["via"] == "api"


async def test_wrong_input_is_refused_and_the_run_stays_paused(start):
    run = start(approval_canvas())
    await run.pending(1)
    run_id = await run.id()
    refused = await resume_approval(run_id, "ask", values={"approved": "perhaps"})
    assert refused.status == "refused"
    assert "approved" in refused.message and "reason" in refused.message
    assert len(await pending_approvals(run_id)) == 1
    assert not run.task.done()
    accepted = await resume_approval(run_id, "ask", values={"approved": True, "reason": "fixed"})
    assert accepted.status == "accepted"
    _, result = await run.result()
    assert result["status"] == "completed"
    again = await resume_approval(run_id, "ask", values={"approved": True, "reason": "twice"})
    assert again.status == "not_waiting"


async def test_timeout_routes_along_the_timeout_edge(start):
    run = start(approval_canvas(timeout_s=1.5))
    state, result = await run.result()
    assert state.is_completed()
    assert result["nodes"]["late"]["output"] == "too late"
    assert result["nodes"]["ask"]["output"]["timed_out"] is True
    assert result["nodes"]["ship"]["status"] == "skipped"


async def test_timeout_with_nothing_connected_fails_the_node_not_by_prefect(start):
    raw = canvas([node("ask", "approval", data={"timeout_s": 1}), node("fallback")], [("ask", "fallback", "error")])
    run = start(raw)
    state, result = await run.result()
    assert state.is_completed()
    assert result["nodes"]["ask"]["status"] == "failed"
    assert result["nodes"]["ask"]["error"]["type"] == "ApprovalTimeout"
    assert result["nodes"]["fallback"]["status"] == "completed"


async def test_two_approvals_in_parallel_branches_answered_in_reverse_order(start):
    raw = canvas(
        [
            node("a", "approval", data={"message": "first"}),
            node("b", "approval", data={"message": "second"}),
            node("busy", "test_sleep", data={"seconds": 0.3}),
            node("j", "merge", join="all"),
        ],
        [("a", "j", "approved"), ("b", "j", "approved"), ("busy", "j")],
    )
    run = start(raw)
    pending = await run.pending(2)
    assert sorted(p["node_id"] for p in pending) == ["a", "b"]
    run_id = await run.id()
    assert (await resume_approval(run_id, "b", values={"approved": True})).status == "accepted"
    for _ in range(100):  # b goes on by itself while a still waits
        if [p["node_id"] for p in await pending_approvals(run_id)] == ["a"]:
            break
        await asyncio.sleep(0.1)
    assert [p["node_id"] for p in await pending_approvals(run_id)] == ["a"]
    assert (await resume_approval(run_id, "a", values={"approved": True})).status == "accepted"
    state, result = await run.result()
    assert state.is_completed()
    assert set(result["nodes"]["j"]["output"]) == {"a", "b", "busy"}
    assert ("busy", ()) in JOURNAL.spans  # the branch without approval ran while the others waited
    decided = [e.node_id for e in run.events if e.type == "node:completed" and e.node_id in ("a", "b")]
    assert decided == ["b", "a"]


async def test_approval_inside_a_loop_pauses_each_iteration(start):
    raw = canvas(
        [
            node("lp", "loop", data={"mode": "for", "count": 2}),
            node("ask", "approval", parentId="lp", data={"message": "iteration {{ loop.index }}"}),
            node("rec", "transform", parentId="lp", data={"output": "{{ ask.approved }}"}),
        ],
        [("ask", "rec", "approved"), ("ask", "rec", "rejected")],
    )
    run = start(raw)
    run_id = await run.id()
    for index, approved in ((0, True), (1, False)):
        [pending] = await run.pending(1)
        assert pending["path"] == [index] and pending["message"] == f"iteration {index}"
        answer = await resume_approval(run_id, "ask", path=[index], values={"approved": approved})
        assert answer.status == "accepted", answer.message
        for _ in range(100):
            if not [p for p in await pending_approvals(run_id) if p["path"] == [index]]:
                break
            await asyncio.sleep(0.1)
    _, result = await run.result()
    assert result["nodes"]["lp"]["output"]["results"] == [True, False]


async def test_resume_of_an_unknown_run_or_node_is_not_waiting(start):
    assert (await resume_approval("not-a-uuid", "ask")).status == "not_waiting"
    run = start(approval_canvas())
    await run.pending(1)
    answer = await resume_approval(await run.id(), "nobody", values={"approved": True})
    assert answer.status == "not_waiting"
    assert len(await pending_approvals(await run.id())) == 1  # the run still waits on its own node
    answer = await resume_approval(await run.id(), "ask", values={"approved": True, "reason": "done"})
    assert answer.status == "accepted", answer.message
    state, result = await run.result()
    assert state.is_completed() and result["nodes"]["ship"]["output"] == "shipped because done"


class FailingPrefect:
    """A proxy in front of the session's Prefect server that answers 500 for the decision
    inputs FlowMaestro's API writes while ``failing`` is set; everything else goes through."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.failing = asyncio.Event()
        self.failed: list[str] = []
        self.url = ""
        """Its Prefect API URL, once it serves (the ``failing_prefect`` fixture)."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        if self.failing.is_set() and scope["method"] == "POST" and path.endswith("/input") and b'"fm-decision-' in body:
            self.failed.append(path)
            await send(
                {"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": b'{"detail": "Internal Server Error"}'})
            return
        upstream = self.upstream + path.removeprefix("/api")
        headers = [
            (k.decode(), v.decode()) for k, v in scope["headers"] if k.lower() not in (b"host", b"content-length")
        ]
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.request(
                scope["method"], upstream, params=scope["query_string"].decode(), headers=headers, content=body
            )
        await send(
            {
                "type": "http.response.start",
                "status": answer.status_code,
                "headers": [
                    (k.encode(), v.encode())
                    for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer.content})


@pytest.fixture
async def failing_prefect(prefect_server):
    import uvicorn

    from tests.processes import free_port

    proxy = FailingPrefect(prefect_server.api_url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(proxy, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 60
    while not server.started:
        assert not serving.done() and asyncio.get_running_loop().time() < deadline, "the proxy did not start"
        await asyncio.sleep(0.05)
    proxy.url = f"http://127.0.0.1:{port}/api"
    yield proxy
    server.should_exit = True
    await asyncio.wait_for(serving, 60)


async def test_prefect_failing_while_a_decision_is_sent_answers_503_naming_it_not_409(
    tmp_path, failing_prefect, in_process_workers
):
    """Bug: any failure of Prefect while the decision was written answered 409 "already sent".
    The API here reaches Prefect through a proxy that fails that write with a 500: 503 naming
    Prefect, and the approval still waits; once Prefect answers again, the same request goes
    through."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from api.app import create_app
    from api.settings import ApiSettings
    from tests.support import wait_final

    key, pool = f"key-{uuid.uuid4().hex}", f"approvals-{uuid.uuid4().hex[:6]}"
    database = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    settings = ApiSettings(
        database_url=database, api_keys=f"ada:{key}", home=tmp_path, work_pool=pool, prefect_timeout_s=20
    )
    # The worker talks to Prefect directly; only the API goes through the proxy.
    from store.db import upgrade_schema

    await upgrade_schema(database)
    await in_process_workers.start(database, pool)
    raw = canvas(
        [
            node("ask", "approval", data={"form": {"reason": {"type": "string", "required": True}}}),
            node("yes", data={"output": "{{ ask.input.reason }}"}),
        ],
        [("ask", "yes", "approved")],
        name=f"ask-{uuid.uuid4().hex[:6]}",
    )
    with temporary_settings({PREFECT_API_URL: failing_prefect.url}):
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            ) as api,
        ):
            saved = await api.post("/api/workflows", json={"canvas": raw})
            assert saved.status_code == 201, saved.text
            started = await api.post(f"/api/workflows/{saved.json()['id']}/execute", json={})
            assert started.status_code == 202, started.text
            execution_id = started.json()["execution_id"]
            deadline = asyncio.get_running_loop().time() + 120
            while not (await api.get(f"/api/executions/{execution_id}")).json()["pending_approvals"]:
                assert asyncio.get_running_loop().time() < deadline, "the approval was never announced"
                await asyncio.sleep(0.2)
            answer = {"node_id": "ask", "input": {"approved": True, "reason": "ok"}}
            failing_prefect.failing.set()
            refused = await api.post(f"/api/executions/{execution_id}/resume", json=answer)
            assert failing_prefect.failed, "the decision never reached the failing Prefect"
            assert refused.status_code == 503, refused.text
            assert refused.json()["service"] == "prefect" and refused.headers["retry-after"]
            [pending] = (await api.get(f"/api/executions/{execution_id}")).json()["pending_approvals"]
            assert pending["decision_sent"] is False
            failing_prefect.failing.clear()
            accepted = await api.post(f"/api/executions/{execution_id}/resume", json=answer)
            assert accepted.status_code == 200, accepted.text
            result = await wait_final(api, execution_id, timeout=120)
            assert result["output"] == {"yes": "ok"}


async def test_prefect_failing_while_an_unsigned_decision_is_sent_raises_not_already_sent(start, failing_prefect):
    """The CLI's way (no API): the failure is raised, not answered "a decision was already sent"."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run = start(approval_canvas())
    await run.pending(1)
    run_id = await run.id()
    failing_prefect.failing.set()
    with temporary_settings({PREFECT_API_URL: failing_prefect.url}):
        async with get_client() as client:
            with pytest.raises(PrefectHTTPStatusError) as raised:
                await resume_approval(run_id, "ask", values={"approved": True, "reason": "x"}, client=client)
    assert raised.value.response.status_code == 500
    assert [p["decision_sent"] for p in await pending_approvals(run_id)] == [False]
    failing_prefect.failing.clear()
    assert (await resume_approval(run_id, "ask", values={"approved": True, "reason": "ok"})).status == "accepted"
    state, result = await run.result()
    assert result["nodes"]["ship"]["output"] == "shipped because ok"
