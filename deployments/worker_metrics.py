"""A worker's Prometheus metrics: ``GET /metrics`` on ``FLOWMAESTRO_WORKER_METRICS_PORT``.

What its runs did (``flows.run_metrics``: run and node durations, node executions by
status, model tokens and cost, the wait from accepted to started) and its run slots. Each
worker serves its own and Prometheus sums them; the API's ``/metrics`` has what passes
through the API and the runs' final counts from the store (``api/metrics.py``).

Served by prometheus_client's own HTTP server, in a thread: a scrape never waits for the
worker's event loop, and a busy loop does not make the worker look down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sized
from wsgiref.simple_server import WSGIServer

from prometheus_client import Gauge, start_http_server

from flows.run_metrics import RunMetrics

log = logging.getLogger("flowmaestro.worker")


def track_slots(metrics: RunMetrics, running: Callable[[], Sized], limit: int) -> None:
    """The worker's run slots: how many it has, how many its runs hold now."""
    in_use = Gauge(
        "flowmaestro_worker_slots_in_use",
        "Runs this worker executes now (each holds one of its slots, FLOWMAESTRO_WORKER_LIMIT).",
        registry=metrics.registry,
    )
    in_use.set_function(lambda: len(running()))
    slots = Gauge("flowmaestro_worker_slots", "Runs this worker executes at most at once.", registry=metrics.registry)
    slots.set(limit)


class MetricsServer:
    """The worker's ``/metrics`` endpoint, in a thread of its own until ``close``."""

    def __init__(self, metrics: RunMetrics, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port: int = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
