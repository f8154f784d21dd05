"""Prometheus metrics of the runs a process executes (a worker's ``/metrics``,
``deployments/worker_metrics.py``): run and node durations, node executions by status,
model tokens and cost, the wait from accepted to started.

Kept in the process that executes the runs, each worker its own: Prometheus scrapes every
worker and sums them (``sum by (...)``), the way it aggregates any fleet of processes. A
shared counter in the store or Redis would cost a write per node on the run's path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

NODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class RunMetrics:
    """The metrics of one process's runs, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.run_duration = Histogram(
            "flowmaestro_run_duration_seconds",
            "Runs that ended here, from execution:started to their final event, by workflow and final status.",
            ["workflow", "status"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.node_duration = Histogram(
            "flowmaestro_node_duration_seconds",
            "Node executions that ended here (attempts and waits included), by workflow and node type.",
            ["workflow", "node_type"],
            buckets=NODE_BUCKETS,
            registry=self.registry,
        )
        self.node_executions = Counter(
            "flowmaestro_node_executions",
            "Node executions that ended here, by workflow, node type and status "
            "(completed, failed, cached, cancelled; restored from the journal: completed).",
            ["workflow", "node_type", "status"],
            registry=self.registry,
        )
        self.model_tokens = Counter(
            "flowmaestro_model_tokens",
            "Tokens of model calls (llm, router, agent nodes) as the model reported them, by model and kind "
            "(input, output). Cached and restored nodes spent none.",
            ["model", "kind"],
            registry=self.registry,
        )
        self.model_cost = Counter(
            "flowmaestro_model_cost_usd",
            "Cost of model calls in US dollars from the price table (FLOWMAESTRO_LLM_PRICES); "
            "0 for models without a price.",
            ["model"],
            registry=self.registry,
        )
        self.start_delay = Histogram(
            "flowmaestro_run_start_delay_seconds",
            "From a run accepted (created in Prefect, or due for a scheduled run) to its first start on a worker.",
            buckets=START_BUCKETS,
            registry=self.registry,
        )

    def node_ended(
        self, workflow: str, node_type: str, status: str, seconds: float, usage: Mapping[str, Any] | None, spent: bool
    ) -> None:
        """``spent``: the node called its model now (not cached, not restored)."""
        self.node_duration.labels(workflow, node_type).observe(seconds)
        self.node_executions.labels(workflow, node_type, status).inc()
        if spent and usage and ("input_tokens" in usage or "output_tokens" in usage):
            model = str(usage.get("model") or "unknown")
            for kind in ("input", "output"):
                tokens = usage.get(f"{kind}_tokens")
                if isinstance(tokens, int | float) and tokens > 0:
                    self.model_tokens.labels(model, kind).inc(tokens)
            cost = usage.get("cost_usd")
            self.model_cost.labels(model).inc(cost if isinstance(cost, int | float) and cost > 0 else 0)

    def run_ended(self, workflow: str, status: str, seconds: float) -> None:
        self.run_duration.labels(workflow, status).observe(seconds)

    def run_started(self, delay_s: float) -> None:
        self.start_delay.observe(max(delay_s, 0.0))
