"""Serve the generic flow as a Prefect deployment.

A deployment gives a canvas what Prefect has for any flow: cron schedules, runs triggered
from the Prefect UI or API (and so webhooks and automations), and execution by a runner
process that can live on another machine. ``flowmaestro deploy FILE --cron ...`` serves
one canvas; for many machines, use a Prefect work pool and ``prefect worker start`` with
the same deployment (the flow's entry point is ``flows/flow.py:run_workflow``).
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.client.schemas.schedules import CronSchedule

from flows.flow import run_workflow

DEFAULT_LIMIT = 8


def build_deployment(canvas: dict[str, Any], inputs: dict[str, Any], *, name: str | None = None,
                     cron: str | None = None, timezone: str | None = None) -> Any:
    """A runner deployment of the generic flow whose default parameters are this canvas
    and inputs; ``cron`` adds a schedule (``timezone`` defaults to UTC)."""
    deployment_name = name or str(canvas.get("name") or "workflow")
    schedules = [CronSchedule(cron=cron, timezone=timezone or "UTC")] if cron else None
    return run_workflow.to_deployment(
        name=deployment_name, parameters={"canvas": canvas, "inputs": inputs}, schedules=schedules,
        tags=["flowmaestro", f"canvas:{deployment_name}"],
        description=f"FlowMaestro canvas {deployment_name!r}" + (f", on {cron}" if cron else ""),
    )


def serve_deployments(*deployments: Any, limit: int = DEFAULT_LIMIT) -> None:
    """Serve until interrupted. ``limit`` caps concurrent runs (Prefect's ``None`` would
    mean no cap at all). SIGTERM does not pause the schedules."""
    serve(*deployments, limit=limit, pause_on_shutdown=False)
