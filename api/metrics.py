"""Prometheus metrics of the API (``GET /metrics``).

Runs execute on workers, so what the API counts itself is what passes through it (runs
started here); how many runs ended, by status, and how many are in flight is read from
the store when scraped, so it is right whichever worker ran them and survives restarts.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select

from store.db import ExecutionRow, Sessions
from store.queries import FINAL_STATUSES


class _StoredRuns:
    """A collector of the last counts read from the store (``refresh`` before a scrape)."""

    def __init__(self) -> None:
        self.counts: list[tuple[str, str, int]] = []

    def collect(self) -> Iterable[Metric]:
        finished = CounterMetricFamily(
            "flowmaestro_runs_finished", "Runs that ended, by final status.", labels=["workflow", "status"]
        )
        in_flight = GaugeMetricFamily("flowmaestro_runs_in_flight", "Runs started and not ended, all workers.")
        waiting = 0
        for workflow, status, count in self.counts:
            if status in FINAL_STATUSES:
                finished.add_metric([workflow, status], count)
            else:
                waiting += count
        in_flight.add_metric([], waiting)
        return [finished, in_flight]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs_started = Counter(
            "flowmaestro_runs_started_total",
            "Runs started through this API process.",
            ["workflow"],
            registry=self.registry,
        )
        self.canvas_compiles = Counter(
            "flowmaestro_canvas_compiles_total",
            "Canvases this API process compiled "
            "(validate, save; a saved version's plan is compiled once, then cached).",
            registry=self.registry,
        )
        self._stored = _StoredRuns()
        self.registry.register(self._stored)

    async def refresh(self, sessions: Sessions) -> None:
        query = select(ExecutionRow.workflow_name, ExecutionRow.status, func.count()).group_by(
            ExecutionRow.workflow_name, ExecutionRow.status
        )
        async with sessions() as session:
            self._stored.counts = [(name, status, count) for name, status, count in await session.execute(query)]
