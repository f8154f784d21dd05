"""Pydantic models of the canvas-v1 document, as a frontend sends it.

React Flow exports are accepted as they are: UI keys (``position``, ``measured``, ...) are
ignored. A node's ``data`` stays a plain dict here; each handler's own schema validates it
in the compiler, because only the catalog knows which node types exist.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from builder.json_types import JsonType

RetryClass = Literal["timeout", "connection", "5xx", "429", "error"]
"""What a retry policy can retry: timeouts, connection errors, HTTP 5xx, HTTP 429, and
``error`` for any other error a handler marks retryable (an LLM reply that does not fit
its schema, for instance)."""
RETRY_CLASSES: tuple[str, ...] = get_args(RetryClass)

JoinMode = Literal["all", "any"]
OnError = Literal["fail_fast", "continue"]

# Keys React Flow (v11/v12) and common canvas libraries put on nodes and edges for
# drawing. They are dropped silently; any other unknown key earns a warning so a typo
# such as ``timout_s`` does not go unnoticed.
UI_NODE_KEYS = frozenset(
    {
        "position",
        "positionAbsolute",
        "width",
        "height",
        "selected",
        "dragging",
        "style",
        "measured",
        "className",
        "hidden",
        "draggable",
        "selectable",
        "connectable",
        "deletable",
        "zIndex",
        "extent",
        "expandParent",
        "sourcePosition",
        "targetPosition",
        "dragHandle",
        "ariaLabel",
        "focusable",
        "resizing",
        "origin",
        "handles",
        "initialWidth",
        "initialHeight",
        "internals",
        "domAttributes",
        "ariaRole",
    }
)
UI_EDGE_KEYS = frozenset(
    {
        "type",
        "animated",
        "style",
        "label",
        "labelStyle",
        "labelShowBg",
        "labelBgStyle",
        "labelBgPadding",
        "labelBgBorderRadius",
        "markerStart",
        "markerEnd",
        "selected",
        "hidden",
        "deletable",
        "focusable",
        "zIndex",
        "interactionWidth",
        "ariaLabel",
        "className",
        "pathOptions",
        "updatable",
        "reconnectable",
        "sourceX",
        "sourceY",
        "targetX",
        "targetY",
        "domAttributes",
        "ariaRole",
    }
)


# Top-level keys of a canvas document that are not part of it but are known to be harmless:
# React Flow's ``toObject()`` adds ``viewport``; stored workflows carry ``id``/``version``;
# editors add ``$schema``; test fixtures carry ``expect``. Any other unknown key earns a
# warning (a typo such as ``setings`` would otherwise silently mean "defaults").
DOCUMENT_EXTRA_KEYS = frozenset({"viewport", "expect", "id", "version", "$schema", "metadata"})


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class InputSpec(BaseModel):
    """One declared run input."""

    model_config = ConfigDict(extra="forbid")
    type: JsonType
    required: bool = False
    default: Any = None
    description: str | None = None


class RetrySpec(BaseModel):
    """Per-node retry policy; unset fields take the handler type's defaults."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: int | None = Field(None, ge=1, le=100, description="Total attempts, first one included.")
    initial_delay_s: float | None = Field(None, ge=0, le=3600)
    backoff_factor: float | None = Field(None, ge=1, le=10)
    max_delay_s: float | None = Field(None, ge=0, le=86400)
    jitter: float | None = Field(None, ge=0, le=1, description="Random spread as a fraction of each delay.")
    retry_on: list[RetryClass] | None = None


class CacheSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    ttl_s: float | None = Field(None, gt=0, description="Lifetime of a stored result; none means no expiry.")


class ConcurrencySpec(BaseModel):
    """At most ``limit`` executions of nodes with the same resolved ``key`` at once, across
    every worker (a Prefect global concurrency limit per key)."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(
        min_length=1, max_length=200, description="A template; nodes whose keys resolve alike share the limit."
    )
    limit: int = Field(ge=1, le=10_000, description="Executions at once with this key.")


class RateLimitSpec(BaseModel):
    """At most ``per_minute`` starts a minute of nodes with the same resolved ``key``, spread
    evenly (one every 60/per_minute seconds), across every worker."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(
        min_length=1, max_length=200, description="A template; nodes whose keys resolve alike share the limit."
    )
    per_minute: int = Field(ge=1, le=60_000, description="Starts a minute with this key.")


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_concurrency: int = Field(8, ge=1, le=1000, description="Nodes running at once in a run.")
    timeout_s: float | None = Field(None, gt=0, description="Whole-run time limit.")
    on_error: OnError = "fail_fast"


class NodeModel(_Lenient):
    id: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1)
    parentId: str | None = None
    parentNode: str | None = Field(
        None,
        description="React Flow v11's name of parentId; either may be used "
        "(the compiler reads parentNode when parentId is absent).",
    )
    data: dict[str, Any] = Field(default_factory=dict)
    retry: RetrySpec | None = None
    timeout_s: float | None = Field(None, gt=0, le=86400)
    cache: CacheSpec | None = None
    concurrency: ConcurrencySpec | None = None
    rate_limit: RateLimitSpec | None = None
    join: JoinMode = "all"
    replay: bool = Field(
        True,
        description="Whether a run executed again (after a crash, on retry) restores this "
        "node's completed outcome (true) or executes it again (false).",
    )


class EdgeCondition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: Any = Field(description="Left operand, usually a template such as '{{ fetch.status }}'.")
    operator: str
    value: Any = None


class EdgeData(_Lenient):
    condition: EdgeCondition | None = None


class EdgeModel(_Lenient):
    id: str | None = Field(None, min_length=1, max_length=256)
    source: str = Field(min_length=1)
    target: str = Field(min_length=1)
    sourceHandle: str | None = None
    targetHandle: str | None = None
    data: EdgeData | None = None


class CanvasHeader(_Lenient):
    """The document without its nodes and edges, which are parsed one by one so that a
    bad node does not hide the problems of the others."""

    schema_version: Literal[1] = 1
    name: str = Field("workflow", min_length=1, max_length=200)
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    variables: dict[str, Any] = Field(default_factory=dict)
    output: Any = None
    settings: RunSettings = Field(default_factory=RunSettings)


class CanvasDocument(CanvasHeader):
    """The whole document; used for the published JSON Schema."""

    nodes: list[NodeModel] = Field(default_factory=list)
    edges: list[EdgeModel] = Field(default_factory=list)
