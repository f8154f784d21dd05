"""PLACEHOLDER until the llm handler lands: schema only."""

from __future__ import annotations

from pydantic import BaseModel

from builder.catalog import NodeConfig
from node_handlers.base import NodeHandler


class LlmConfig(NodeConfig):
    model: str
    prompt: str | None = None


class LlmHandler(NodeHandler):
    type = "llm"
    Config = LlmConfig


class Route(BaseModel):
    id: str
    description: str = ""


class RouterConfig(NodeConfig):
    model: str
    routes: list[Route]


class RouterHandler(NodeHandler):
    type = "router"
    Config = RouterConfig

    def handles(self, config: RouterConfig) -> frozenset[str]:  # type: ignore[override]
        return frozenset({f"route-{r.id}" for r in config.routes} | {"error"})


HANDLERS = [LlmHandler, RouterHandler]
