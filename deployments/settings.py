"""Worker settings, from the environment (``FLOWMAESTRO_*``); the CLI's flags override them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from store.settings import StoreSettings


class WorkerSettings(StoreSettings):
    work_pool: str = Field("flowmaestro", description="The Prefect work pool workers poll (created on first use).")
    worker_limit: int = Field(
        20,
        ge=1,
        description="Runs one worker process executes at once; more wait in the pool for this or another worker.",
    )
    worker_poll_s: float = Field(
        1.0, gt=0, description="How often a worker asks Prefect for runs to start (Prefect's own default is 10 s)."
    )
    worker_events: bool = Field(
        False,
        description="Workers also listen to Prefect's event stream (one websocket each) and poll as soon as a "
        "run of their pool is scheduled; the poll every worker_poll_s goes on, so a run is never left to an event. "
        "Off by default: it starts a run ~0.2 s sooner at the median, but doubled the Prefect server's CPU in a "
        "burst of runs (docs/performance.md).",
    )
    worker_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM, how long a worker lets its runs in flight finish before handing the rest back.",
    )
    schedule_catch_up: Literal["none", "latest", "all"] = Field(
        "latest",
        description="Scheduled runs missed while FlowMaestro's workers were down (late by more than "
        "schedule_late_after_s): none are run, only the latest of each schedule, or all of them. The others "
        "end Cancelled, saying why.",
    )
    schedule_late_after_s: float = Field(
        60.0,
        gt=0,
        description="A scheduled run that a worker sees this "
        "much after its time is a missed run (see schedule_catch_up).",
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus metrics (GET /metrics: its runs, nodes, model tokens, "
        "slots); unset: none. `flowmaestro serve` gives its workers this port and the next ones.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1",
        description="Address the worker's metrics listen on; their labels name workflows: "
        "open them (0.0.0.0) only to the network Prometheus scrapes from.",
    )
