"""The node catalog (``GET /api/node-types``): every node type of the API's registry, with the
JSON Schema of its ``data`` that the compiler enforces (docs/node-catalog.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from api.auth import Owner
from api.schemas import ErrorBody
from node_handlers.catalog import NodeTypeCatalog, NodeTypeEntry
from store.errors import NotFound

router = APIRouter(prefix="/api/node-types", tags=["node types"])


class HandleOut(BaseModel):
    id: str = Field(description="The source handle an edge names as sourceHandle; `<id>` in it is filled per item.")
    description: str
    dynamic_from: str | None = Field(
        description="For a handle made from the node's data, where its `<id>` comes from (one handle per item)."
    )


class RetryDefaults(BaseModel):
    max_attempts: int
    initial_delay_s: float
    backoff_factor: float
    max_delay_s: float
    jitter: float
    retry_on: list[str]


class CacheDefaults(BaseModel):
    enabled: bool
    ttl_s: float | None
    available: bool = Field(description="False for types that are never cached (side effects on the run).")


class NodeDefaults(BaseModel):
    retry: RetryDefaults
    timeout_s: float | None = Field(description="The node's own time limit when it sets none (null: none).")
    cache: CacheDefaults


class NodeTypePublic(BaseModel):
    type: str
    label: str
    category: str = Field(description="Palette group: core, data, logic, ai, integration, human, other, or a plugin's.")
    description: str
    version: str
    container: str | None = Field(description="'loop' or 'parallel' for a container (nodes name it as parentId).")
    config_schema: dict[str, Any] = Field(description="JSON Schema (2020-12) of the node's `data`.")
    handles: list[HandleOut]
    defaults: NodeDefaults
    side_effects: bool = Field(
        description="Running it does more than compute its output; running it twice is not harmless."
    )


ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}}


def get_catalog(request: Request) -> NodeTypeCatalog:
    catalog: NodeTypeCatalog = request.app.state.node_types  # built by the app's lifespan
    return catalog


CatalogDep = Annotated[NodeTypeCatalog, Depends(get_catalog)]


def _public(entry: NodeTypeEntry) -> NodeTypePublic:
    return NodeTypePublic.model_validate(entry.to_dict())


@router.get("", response_model=list[NodeTypePublic], responses=ERRORS)
async def list_node_types(owner: Owner, catalog: CatalogDep) -> list[NodeTypePublic]:
    """Every node type the compiler accepts, plugins included, by palette group."""
    return [_public(entry) for entry in catalog.entries()]


@router.get("/{node_type}", response_model=NodeTypePublic, responses={**ERRORS, 404: {"model": ErrorBody}})
async def read_node_type(node_type: str, owner: Owner, catalog: CatalogDep) -> NodeTypePublic:
    """One node type; 404 names the known ones when it is not registered."""
    entry = catalog.entry(node_type)
    if entry is None:
        known = ", ".join(e.type for e in catalog.entries())
        message = f"unknown node type {node_type[:100]!r}; known types: {known}"
        raise NotFound(message, [{"code": "unknown_node_type", "field": "node_type", "message": message}])
    return _public(entry)
