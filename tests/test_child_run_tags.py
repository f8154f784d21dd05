"""Every flow run of a saved workflow carries its ``workflow:<id>`` tag in Prefect, a child
run that a parent's subworkflow node started included (so filtering the Prefect UI by the
tag finds every run of the workflow)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

from api.app import create_app
from api.settings import ApiSettings
from tests.support import canvas, node, wait_final

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]


async def test_a_child_run_of_a_saved_workflow_carries_the_childs_workflow_tag(tmp_path, in_process_workers):
    from store.db import upgrade_schema

    key, pool = f"key-{uuid.uuid4().hex}", f"tags-{uuid.uuid4().hex[:6]}"
    database = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_schema(database)
    await in_process_workers.start(database, pool)
    app = create_app(ApiSettings(database_url=database, api_keys=f"ada:{key}", home=tmp_path, work_pool=pool))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        ) as api,
    ):
        child = (
            await api.post(
                "/api/workflows",
                json={
                    "canvas": canvas(
                        [node("greet", data={"output": "hello {{ inputs.who }}"})],
                        [],
                        name=f"child-{uuid.uuid4().hex[:6]}",
                        inputs={"who": {"type": "string", "required": True}},
                    )
                },
            )
        ).json()
        parent = (
            await api.post(
                "/api/workflows",
                json={
                    "canvas": canvas(
                        [node("call", "subworkflow", data={"workflow": child["id"], "inputs": {"who": "child"}})],
                        [],
                        name=f"parent-{uuid.uuid4().hex[:6]}",
                    )
                },
            )
        ).json()
        started = await api.post(f"/api/workflows/{parent['id']}/execute", json={})
        assert started.status_code == 202, started.text
        run_id = started.json()["execution_id"]
        result = await wait_final(api, run_id, timeout=120)
        assert result["status"] == "completed", result
    async with get_client() as client:
        parent_run = await client.read_flow_run(uuid.UUID(result["flow_run_id"]))
        [child_run] = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[uuid.UUID(result["flow_run_id"])])
            )
        )
    assert f"workflow:{parent['id']}" in parent_run.tags
    assert f"workflow:{child['id']}" in child_run.tags, child_run.tags
    assert f"workflow:{parent['id']}" not in child_run.tags
