"""Helpers shared by the engine tests: tiny canvases and handlers with observable effects."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import Field

from builder.catalog import NodeConfig, Templatable
from builder.compiler import compile_canvas
from builder.plan import RetryPolicy
from node_handlers.base import Completed, NodeContext, NodeError, NodeHandler
from node_handlers.registry import HandlerRegistry, builtin_handlers


def canvas(nodes: list[dict[str, Any]], edges: list[Any] = (), **extra: Any) -> dict[str, Any]:
    """Nodes as dicts; edges as dicts or (source, target[, handle]) tuples."""
    out_edges = []
    for i, edge in enumerate(edges):
        if isinstance(edge, dict):
            out_edges.append(edge)
        else:
            source, target, *handle = edge
            out_edges.append(
                {"id": f"e{i}", "source": source, "target": target, "sourceHandle": handle[0] if handle else None}
            )
    return {"name": extra.pop("name", "test"), "nodes": nodes, "edges": out_edges, **extra}


def hello(name: str | None = None, input_name: str = "who") -> dict[str, Any]:
    """start -> greet ("Hello {{ inputs.<input_name> }}") -> end, with one required string
    input: the saved workflow of the API tests; named ``name``, or a name of its own."""
    return canvas(
        [
            node("start", "start"),
            node("greet", data={"output": f"Hello {{{{ inputs.{input_name} }}}}"}),
            node("end", "end", data={"output": "{{ greet }}"}),
        ],
        [("start", "greet"), ("greet", "end")],
        name=name or f"hello-{uuid.uuid4().hex[:6]}",
        inputs={input_name: {"type": "string", "required": True}},
    )


def node(node_id: str, node_type: str = "transform", **fields: Any) -> dict[str, Any]:
    data = fields.pop("data", None)
    if data is None and node_type == "transform":
        data = {"output": node_id}
    return {"id": node_id, "type": node_type, "data": data or {}, **fields}


class Journal:
    """Records what test handlers did, in order, with monotonic times."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...], int]] = []
        self.spans: dict[tuple[str, tuple[int, ...]], tuple[float, float]] = {}

    def clear(self) -> None:
        self.calls.clear()
        self.spans.clear()


JOURNAL = Journal()


class SleepConfig(NodeConfig):
    seconds: float = 0.0
    value: Any = None


class SleepHandler(NodeHandler):
    """Sleeps, then returns ``value``; records its span so tests can check overlap."""

    type = "test_sleep"
    Config = SleepConfig

    async def run(self, config: SleepConfig, ctx: NodeContext) -> Completed:
        start = time.monotonic()
        JOURNAL.calls.append((ctx.node_id, ctx.path, ctx.attempt))
        await asyncio.sleep(config.seconds)
        JOURNAL.spans[(ctx.node_id, ctx.path)] = (start, time.monotonic())
        return Completed(output=config.value if config.value is not None else ctx.node_id)


class FlakyConfig(NodeConfig):
    failures: Templatable[int] = 1
    retry_class: str | None = "5xx"
    value: Any = "ok"


class FlakyHandler(NodeHandler):
    """Fails its first ``failures`` attempts (per node and path) with the given class."""

    type = "test_flaky"
    Config = FlakyConfig
    default_retry = RetryPolicy(
        max_attempts=3, initial_delay_s=0.05, backoff_factor=2, retry_on=frozenset({"5xx", "timeout"})
    )

    async def run(self, config: FlakyConfig, ctx: NodeContext) -> Completed:
        JOURNAL.calls.append((ctx.node_id, ctx.path, ctx.attempt))
        if ctx.attempt <= config.failures:
            raise NodeError(f"attempt {ctx.attempt} failed", retry_class=config.retry_class)
        return Completed(output=config.value)


class CountConfig(NodeConfig):
    value: Any = None
    label_suffix: str = Field("", description="changes the config without changing the value")


class CountHandler(NodeHandler):
    """Returns ``value`` and records every real call: a cache hit leaves no record."""

    type = "test_count"
    Config = CountConfig

    async def run(self, config: CountConfig, ctx: NodeContext) -> Completed:
        JOURNAL.calls.append((ctx.node_id, ctx.path, ctx.attempt))
        return Completed(output={"value": config.value, "called": True})


TEST_HANDLERS = [SleepHandler, FlakyHandler, CountHandler]


def plugin_handlers() -> list[NodeHandler]:
    """The test handlers as a plugin gives them (``tests/conftest.py``: test_handler_plugin)."""
    return [cls() for cls in TEST_HANDLERS]


def make_registry() -> HandlerRegistry:
    return HandlerRegistry(builtin_handlers() + [cls() for cls in TEST_HANDLERS])


def compiled(raw: dict[str, Any], registry: HandlerRegistry | None = None):
    result = compile_canvas(raw, registry or make_registry())
    assert result.ok, [str(i) for i in result.errors]
    return result.plan


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Await ``check()`` until it answers something truthy; that answer. Fails naming ``what``
    at the deadline (a generous one: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(interval)


async def save(client: httpx.AsyncClient, raw: dict[str, Any], *, deployed: bool = True) -> dict[str, Any]:
    """``POST /api/workflows``: the saved workflow (id, version, name, warnings). ``deployed``:
    its Prefect deployment must be there too. A Prefect server slow under the load of a whole
    suite may answer the save with ``deployment_pending``: the same canvas is saved again
    (``PUT``, which makes the deployment then) until it is there."""
    saved = await client.post("/api/workflows", json={"canvas": raw})
    assert saved.status_code == 201, saved.text
    if deployed:
        answer = saved
        deadline = time.monotonic() + 120
        while [w for w in answer.json()["warnings"] if w["code"] == "deployment_pending"]:
            assert time.monotonic() < deadline, f"no deployment within 120 s: {answer.text}"
            answer = await client.put(f"/api/workflows/{saved.json()['id']}", json={"canvas": raw})
            assert answer.status_code == 200, answer.text
    return saved.json()


async def execute(client: httpx.AsyncClient, workflow_id: str, inputs: dict[str, Any] | None = None) -> str:
    """``POST /api/workflows/{id}/execute`` (202): the execution id."""
    started = await client.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": inputs or {}})
    assert started.status_code == 202, started.text
    return started.json()["execution_id"]


async def save_and_execute(
    client: httpx.AsyncClient, raw: dict[str, Any], inputs: dict[str, Any] | None = None, *, deployed: bool = True
) -> str:
    return await execute(client, (await save(client, raw, deployed=deployed))["id"], inputs)


async def wait_execution(
    client: httpx.AsyncClient, execution_id: str, check: Callable[[dict[str, Any]], Any], *, timeout: float, what: str
) -> dict[str, Any]:
    """Read ``GET /api/executions/{id}`` until ``check(body)`` holds; that body."""
    last: dict[str, Any] = {}

    async def read() -> dict[str, Any] | None:
        nonlocal last
        answer = await client.get(f"/api/executions/{execution_id}")
        last = answer.json() if answer.status_code == 200 else {"http_status": answer.status_code}
        return last if answer.status_code == 200 and check(last) else None

    try:
        return await eventually(read, timeout=timeout, what=f"execution {execution_id}: {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None


async def flow_run_of(client: httpx.AsyncClient, execution_id: str, *, timeout: float = 60) -> str:
    """The Prefect flow run of a run the API accepted, once the API has created it (the
    execution id is the API's own, not the flow run's)."""
    body = await wait_execution(
        client, execution_id, lambda body: body.get("flow_run_id"), timeout=timeout, what="getting its flow run"
    )
    return str(body["flow_run_id"])


async def prefect_flow_run_id(run_id: str, prefect_url: str | None = None) -> str:
    """The flow run of a run, asking Prefect (at ``prefect_url``, or the session's): the one
    tagged with the execution id when the API accepted the run, else the id itself (a flow
    run started elsewhere is its own execution). An accepted run's flow run is created after
    the 202: waits for one of the two to exist."""
    from prefect.client.orchestration import PrefectClient, get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterTags

    from deployments.workflow_deployments import EXECUTION_TAG

    tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=[EXECUTION_TAG.format(id=run_id)]))
    itself = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)]))

    async def found() -> str | None:
        async with PrefectClient(prefect_url) if prefect_url else get_client() as prefect:
            for where in (tagged, itself):
                if runs := await prefect.read_flow_runs(flow_run_filter=where, limit=1):
                    return str(runs[0].id)
        return None

    return await eventually(found, timeout=60, what=f"the flow run of {run_id}")


async def wait_final(client: httpx.AsyncClient, execution_id: str, *, timeout: float) -> dict[str, Any]:
    """Read ``GET /api/executions/{id}`` until the run has ended; its body."""
    return await wait_execution(
        client, execution_id, lambda body: body.get("status") in FINAL_STATUSES, timeout=timeout, what="ending"
    )


async def wait_running(
    client: httpx.AsyncClient, execution_id: str, node_id: str, *, timeout: float = 120
) -> dict[str, Any]:
    """Wait until the run is running ``node_id`` (a worker took it and the node started)."""
    return await wait_execution(
        client,
        execution_id,
        lambda body: (
            body.get("status") == "running" and (body.get("nodes") or {}).get(node_id, {}).get("status") == "running"
        ),
        timeout=timeout,
        what=f"running node {node_id}",
    )


FINAL_STATUSES = ("completed", "failed", "cancelled")
FINAL_TASK_RUN_STATES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


async def task_runs_of(flow_run_id: str, expected: int, *, timeout: float = 120.0) -> list[Any]:
    """The task runs of a flow run in start order, once ``expected`` of them are final.

    Prefect's recorder writes a task run row and its state row one after the other, and
    events may arrive after the run has returned: wait until ``expected`` runs have a final
    state that can be read, then return every run with such a state.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            runs: list[Any] = []
            while True:
                page = await client.read_task_runs(
                    flow_run_filter=flow_runs, limit=200, offset=len(runs), sort=TaskRunSort.EXPECTED_START_TIME_ASC
                )
                runs += page
                if len(page) < 200:
                    break
            final = [r for r in runs if r.state is not None and r.state.type.value in FINAL_TASK_RUN_STATES]
            if len(final) >= expected or time.monotonic() > deadline:
                return final
            await asyncio.sleep(0.5)


async def summary_artifact_of(flow_run_id: str, *, timeout: float = 60.0) -> str:
    """The markdown of a run's summary artifact, once Prefect has it: the run's process sends
    it in the background, after the run's task runs."""
    from prefect.client.orchestration import get_client

    query = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": ["flowmaestro-summary"]}}}
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            found = (await client.request("POST", "/artifacts/filter", json=query)).json()
            if found:
                [artifact] = found
                return artifact["data"]
            await asyncio.sleep(0.2)
    raise AssertionError(f"no summary artifact of flow run {flow_run_id} within {timeout} s")


@asynccontextmanager
async def api_without_prefect(settings: Any, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API (in this process) with nothing listening at its Prefect API URL, and a client
    with the bearer ``key``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from api.app import create_app
    from tests.processes import free_port

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
                headers={"Authorization": f"Bearer {key}"},
            ) as client:
                yield client


async def new_flow_run() -> str:
    """A flow run of a new flow, made through the API with no deployment: nothing executes it."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flow_id = await client.create_flow_from_name(f"forged-{uuid.uuid4().hex[:6]}")
        return (await client.request("POST", "/flow_runs/", json={"flow_id": str(flow_id)})).json()["id"]


async def forge_completed(flow_run_id: str, storage_key: str, serializer: dict[str, Any], block_id: Any = None) -> Any:
    """Force a flow run Completed with its result "at" ``storage_key`` through a plain request to
    Prefect's API, as an http node or anyone reaching Prefect sends it; the state Prefect now
    hands back for that run."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        answer = await client.request(
            "POST",
            "/flow_runs/{id}/set_state",
            path_params={"id": flow_run_id},
            json={
                "force": True,
                "state": {
                    "type": "COMPLETED",
                    "name": "Completed",
                    "data": {
                        "storage_key": storage_key,
                        "serializer": serializer,
                        "storage_block_id": str(block_id) if block_id else None,
                    },
                },
            },
        )
        assert answer.json()["status"] == "ACCEPT", answer.text
        return (await client.read_flow_run(flow_run_id)).state
