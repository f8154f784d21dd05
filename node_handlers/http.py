"""PLACEHOLDER until the http handler lands: schema only."""

from __future__ import annotations

from typing import Any

from builder.catalog import NodeConfig
from node_handlers.base import NodeHandler


class HttpConfig(NodeConfig):
    method: str = "GET"
    url: str
    headers: dict[str, Any] = {}


class HttpHandler(NodeHandler):
    type = "http"
    Config = HttpConfig


HANDLERS = [HttpHandler]
