"""Prometheus metrics of the API process (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flows.events import EventBus, RunEvent


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs_started = Counter("flowmaestro_runs_started_total", "Runs started through the API.",
                                    ["workflow"], registry=self.registry)
        self.runs_finished = Counter("flowmaestro_runs_finished_total", "Runs that ended, by final status.",
                                     ["workflow", "status"], registry=self.registry)
        self.runs_in_flight = Gauge("flowmaestro_runs_in_flight", "Runs executing in this process (queue depth).",
                                    registry=self.registry)
        self.node_duration = Histogram("flowmaestro_node_duration_seconds", "Node execution time by node type.",
                                       ["type", "status"], registry=self.registry,
                                       buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600))
        self._started: dict[tuple[str, str, tuple[int, ...]], tuple[float, str]] = {}

    def attach(self, bus: EventBus) -> None:
        bus.subscribe(self._on_event)

    def _on_event(self, event: RunEvent) -> None:
        if event.node_id is None:
            return
        key = (event.execution_id, event.node_id, event.path or ())
        if event.type == "node:started":
            from time import monotonic

            self._started[key] = (monotonic(), str(event.data.get("type", "unknown")))
        elif event.type in ("node:completed", "node:cached", "node:error") and key in self._started:
            from time import monotonic

            started, node_type = self._started.pop(key)
            self.node_duration.labels(node_type, event.type.split(":")[1]).observe(monotonic() - started)
