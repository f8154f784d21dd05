"""The tools of an agent node: what the model may call, and how a call runs.

- ``http``: one HTTP request through the http node's own code (egress policy, secrets by
  name, redaction, size limits), its url, headers, query and body templates rendered with
  the model's arguments as ``args``; it sends ``Idempotency-Key: <run>:<node>:<path>:<call
  id>``, the same when a run executed again repeats the call.
- ``workflow``: a saved workflow of the run's owner as a child run (as the subworkflow node
  runs one, with its depth and cycle guards); the workflow's declared inputs are the tool's
  parameters and its output the result.
- ``mcp``: the tools of an MCP server (``node_handlers.agent_mcp``).

A call never raises for the tool's own failure: it returns the error, which the agent gives
to the model as the result, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from builder.catalog import at_most_one_of
from builder.templates import TemplateRenderError, render_value
from node_handlers.agent_mcp import McpServer, McpTool
from node_handlers.base import NodeContext, NodeError
from node_handlers.containers import RESOLVED
from node_handlers.credentials import CredentialName
from node_handlers.http import Auth, HttpConfig, HttpHandler, Method
from node_handlers.model_turns import ToolCall, ToolSpec
from node_handlers.services import HandlerServices

TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
RESULT_CHARS = 20_000
"""A tool result longer than this is cut before it goes to the model (and into the output)."""


class HttpTool(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, json_schema_extra=at_most_one_of("auth", "credential")
    )
    type: Literal["http"]
    name: str = Field(pattern=TOOL_NAME)
    description: str = ""
    method: Method = "GET"
    url: str = Field(min_length=1, description="http(s) URL; a template of the call's arguments (args).")
    headers: dict[str, Any] = Field(default_factory=dict)
    query: dict[str, Any] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json", description="JSON body; templates of args.")
    auth: Auth | None = None
    credential: CredentialName | None = Field(None, description="A stored credential, sent as the http node sends it.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: dict(EMPTY_PARAMETERS), description="JSON Schema of the arguments."
    )
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if self.auth is not None and self.credential is not None:
            raise ValueError("give auth (operator secrets) or credential (a stored one), not both")
        return self


class WorkflowTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["workflow"]
    workflow: str = Field(min_length=1, description="Saved workflow id (a canvas file path for the CLI).")
    version: int | None = Field(None, ge=1)
    name: str = Field(pattern=TOOL_NAME)
    description: str = ""


Tool = Annotated[HttpTool | WorkflowTool | McpTool, Field(discriminator="type")]
NamedTool = HttpTool | WorkflowTool | McpServer
"""What a tool name the model calls stands for: an MCP server's tool goes to its server."""


@dataclass(frozen=True)
class CallResult:
    """One tool call as the output and the journal keep it."""

    id: str
    name: str
    arguments: dict[str, Any]
    result: Any
    error: str | None
    duration_ms: int

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CallResult:
        return cls(**data)

    def for_model(self) -> str:
        """What the model reads as the tool's result."""
        if self.error is not None:
            return f"Error: {self.error}"
        text = self.result if isinstance(self.result, str) else json.dumps(self.result, default=str)
        return text[:RESULT_CHARS]


JSON_TYPES = {"string", "number", "integer", "boolean", "object", "array"}


def inputs_schema(declared: Mapping[str, Any]) -> dict[str, Any]:
    """A workflow's declared inputs (``{name: {type, required, description, default}}``) as
    the JSON Schema of a tool's arguments."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in declared.items():
        spec = spec if isinstance(spec, Mapping) else {}
        prop: dict[str, Any] = {}
        if spec.get("type") in JSON_TYPES:
            prop["type"] = spec["type"]
        if spec.get("description"):
            prop["description"] = str(spec["description"])
        if spec.get("enum"):
            prop["enum"] = list(spec["enum"])
        properties[name] = prop
        if spec.get("required") and "default" not in spec:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


async def toolbox(
    tools: list[HttpTool | WorkflowTool | McpTool], ctx: NodeContext, services: HandlerServices
) -> tuple[list[ToolSpec], dict[str, NamedTool]]:
    """The tools as the model sees them, and what each name stands for. A workflow tool's
    parameters are its declared inputs; an MCP server's tools are listed from it."""
    specs: list[ToolSpec] = []
    named: dict[str, NamedTool] = {}
    for tool in tools:
        if isinstance(tool, HttpTool):
            found = [ToolSpec(tool.name, tool.description, tool.parameters)]
            stands: NamedTool = tool
        elif isinstance(tool, WorkflowTool):
            declared = await ctx.capabilities.workflow_inputs(tool.workflow, tool.version)
            description = tool.description or f"Runs the workflow {tool.workflow}."
            found = [ToolSpec(tool.name, description, inputs_schema(declared))]
            stands = tool
        else:
            stands = await McpServer.open(tool, ctx.owner, services)
            found = await stands.specs()
        for spec in found:
            if spec.name in named:
                raise NodeError(f"two tools of the agent are named {spec.name!r} (an MCP server's tool, say)")
            named[spec.name] = stands
        specs += found
    return specs, named


async def call_tool(tool: NamedTool | None, call: ToolCall, ctx: NodeContext) -> CallResult:
    """Run one call; its failure becomes the result's ``error``."""
    started = time.monotonic()
    result: Any = None
    error: str | None = None
    try:
        if tool is None:
            raise NodeError(f"there is no tool named {call.name!r}")
        if call.arguments_error is not None:
            raise NodeError(call.arguments_error)
        if isinstance(tool, HttpTool):
            result = await call_http(tool, call, ctx)
        elif isinstance(tool, McpServer):
            result = await tool.call(call.name, call.arguments)
        else:
            step = f"call-{call.id}"
            result = (
                await ctx.capabilities.start_child_run(tool.workflow, tool.version, call.arguments, step=step)
            ).output
    except NodeError as exc:
        error = exc.message
    duration_ms = round((time.monotonic() - started) * 1000)
    return CallResult(call.id, call.name, call.arguments, result, error, duration_ms)


async def call_http(tool: HttpTool, call: ToolCall, ctx: NodeContext) -> Any:
    raw = tool.model_dump(by_alias=True, include={"method", "url", "headers", "query", "json_body", "timeout_s"})
    try:
        rendered = render_value(raw, {"args": call.arguments}, field=f"tools.{tool.name}")
    except TemplateRenderError as exc:
        raise NodeError(f"tool {tool.name}: {exc.message}") from None
    if tool.auth is not None:
        rendered["auth"] = tool.auth.model_dump()
    if tool.credential is not None:
        rendered["credential"] = tool.credential
    config = HttpConfig.model_validate(rendered, context={RESOLVED: True})
    key = f"{ctx.idempotency_key}:{call.id}" if ctx.idempotency_key else ""
    completed = await HttpHandler().run(config, dataclasses.replace(ctx, idempotency_key=key))
    output = completed.output
    return {"status": output["status"], "body": output["body"]}
