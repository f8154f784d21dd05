"""Start a run of the generic flow in this process without waiting for it.

The flow run is created first, so its id (the execution id) is known at once; the flow
then runs as an asyncio task of the calling process. This is how the API starts runs:
no runner poll, the first node starts within a fraction of a second. For runs on other
machines, serve the flow as a deployment (``deployments/``) and let workers pick them up.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.states import Pending

from flows.prefect_compat import start_flow_run_in_process


async def start_run(workflow: Flow, canvas: dict[str, Any], inputs: dict[str, Any], *,
                    workflow_id: str | None = None, version: int | None = None, owner: str | None = None,
                    tags: list[str] | None = None) -> tuple[str, asyncio.Task[Any]]:
    """Start ``workflow`` (the generic flow bound to the caller's context,
    ``flows.flow.workflow_flow``) on a canvas; returns the run id and the task whose result
    is the run's final state."""
    parameters = {"canvas": canvas, "inputs": inputs, "workflow_id": workflow_id, "version": version,
                  "owner": owner}
    run_tags = ["flowmaestro", *(tags or [])]
    if workflow_id:
        run_tags.append(f"workflow:{workflow_id}")
    if version is not None:
        run_tags.append(f"version:{version}")
    async with get_client() as client:
        flow_run = await client.create_flow_run(workflow, name=str(canvas.get("name") or "workflow"),
                                                parameters=parameters, tags=run_tags, state=Pending())
    return str(flow_run.id), start_flow_run_in_process(workflow, flow_run, parameters)
