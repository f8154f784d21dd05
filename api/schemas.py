"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    RootModel,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from api.webhook_schemes import InputMapping, Verification
from store.credentials import CUSTOM_FIELD_PATTERN, HEADER_NAME_PATTERN, MAX_FIELDS, MAX_VALUE_CHARS
from store.vocabulary import EventType, NodeStatus, RunStatus


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(_utc)]
"""Stored in UTC; SQLite gives it back without its zone, which is no RFC 3339 date-time."""

EXAMPLE_CANVAS: dict[str, JsonValue] = {
    "name": "hello",
    "inputs": {"name": {"type": "string", "required": True}},
    "nodes": [
        {"id": "start", "type": "start", "data": {}},
        {"id": "greet", "type": "transform", "data": {"output": "Hello {{ inputs.name }}"}},
        {"id": "end", "type": "end", "data": {"output": "{{ greet }}"}},
    ],
    "edges": [{"id": "e1", "source": "start", "target": "greet"}, {"id": "e2", "source": "greet", "target": "end"}],
}


class IssueOut(BaseModel):
    code: str | None = None
    message: str
    node_id: str | None = None
    edge_id: str | None = None
    field: str | None = None
    severity: str = "error"
    related: list[str] = Field(default_factory=list)


class ErrorBody(BaseModel):
    detail: str
    issues: list[IssueOut] = Field(default_factory=list)


class RequestBody(BaseModel):
    """A request body: its values have the types the schema says, none converted (``0`` is not
    ``false``, ``"10"`` not ``10``), so the API accepts exactly what it documents."""

    model_config = ConfigDict(strict=True)


class CanvasBody(RequestBody):
    """A canvas: under ``canvas``, or the document itself (a React Flow export as
    ``toObject()`` gives it: ``nodes``, ``edges``, ``viewport``...), with ``name`` and
    ``types`` beside it."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"canvas": EXAMPLE_CANVAS},
                {
                    "name": "from the editor",
                    "types": {"input": "start", "output": "end", "group": None},
                    "nodes": EXAMPLE_CANVAS["nodes"],
                    "edges": EXAMPLE_CANVAS["edges"],
                    "viewport": {"x": 0, "y": 0, "zoom": 1},
                },
            ],
            "anyOf": [{"required": ["canvas"]}, {"required": ["nodes"]}],
        },
    )
    canvas: dict[str, Any] | SkipJsonSchema[None] = Field(
        None, description="A canvas-v1 document (React Flow export accepted); or send the document itself as the body."
    )
    name: str | None = Field(None, min_length=1, max_length=200, description="The workflow's name, over the canvas's.")
    types: dict[str, str | None] = Field(
        default_factory=dict,
        max_length=100,
        description="Node types of the export -> FlowMaestro's (React Flow's built-in 'input', 'default', "
        "'output', 'group'; a node without a type is 'default'); null drops those nodes (a visual group), "
        "their edges, and makes their children top-level.",
    )
    nodes: list[Any] | SkipJsonSchema[None] = Field(
        None, description="The export's nodes, when the body is the document itself."
    )
    edges: list[Any] | SkipJsonSchema[None] = Field(
        None, description="The export's edges, when the body is the document itself."
    )

    @field_validator("canvas", "nodes", "edges", mode="before")
    @classmethod
    def _given_as_documented(cls, value: Any, info: ValidationInfo) -> Any:
        # Absent, never null: the schema documents objects and lists (null is not "absent").
        # Checked here, before the optional type's union, so that the 422 names the field
        # itself (body.canvas), not one member of the union.
        if value is None:
            raise ValueError(f"{info.field_name} may be left out but not null")
        expected = dict if info.field_name == "canvas" else list
        if not isinstance(value, expected):
            raise ValueError(f"{info.field_name} must be {'an object' if expected is dict else 'a list'}")
        return value

    @model_validator(mode="after")
    def _one_document(self) -> CanvasBody:
        if self.canvas is None and self.nodes is None:
            raise ValueError("give the canvas as 'canvas', or send the document (its 'nodes' and 'edges') as the body")
        return self

    def document(self) -> dict[str, Any]:
        """The canvas to compile, with ``name`` and ``types`` applied."""
        if self.canvas is not None:  # the document; other keys beside it but name and types are ignored
            document = dict(self.canvas)
        else:
            document = {**(self.model_extra or {}), "nodes": self.nodes, "edges": self.edges or []}
        if self.name is not None:
            document["name"] = self.name
        if self.types:
            document = map_node_types(document, self.types)
        return document


def _names(value: Any, ids: set[str]) -> bool:
    return isinstance(value, str) and value in ids


def map_node_types(document: dict[str, Any], types: dict[str, str | None]) -> dict[str, Any]:
    """The document with its nodes' types mapped; nodes mapped to None dropped with their edges
    (their children, if any, move to the top level)."""
    nodes: list[Any] = []
    dropped: set[str] = set()
    for raw in document.get("nodes") or []:
        if not isinstance(raw, dict):
            nodes.append(raw)
            continue
        kind = raw.get("type") if raw.get("type") is not None else "default"
        if isinstance(kind, str) and kind in types:
            if types[kind] is None:
                if isinstance(raw.get("id"), str):
                    dropped.add(raw["id"])
                continue
            raw = {**raw, "type": types[kind]}
        nodes.append(raw)
    if dropped:
        nodes = [
            {k: v for k, v in n.items() if k not in ("parentId", "parentNode")}
            if isinstance(n, dict) and (_names(n.get("parentId"), dropped) or _names(n.get("parentNode"), dropped))
            else n
            for n in nodes
        ]
    edges = document.get("edges")
    if dropped and isinstance(edges, list):
        edges = [
            e for e in edges if not (isinstance(e, dict) and (e.get("source") in dropped or e.get("target") in dropped))
        ]
    return {**document, "nodes": nodes, "edges": edges}


class WorkflowSaved(BaseModel):
    id: str
    version: int
    name: str
    warnings: list[IssueOut] = Field(default_factory=list)


class WorkflowSummary(BaseModel):
    # Always in the answers: required in the published schema (typed clients need not check).
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    id: str
    name: str
    latest_version: int
    created_at: Timestamp
    updated_at: Timestamp
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    status: Literal["active", "draft", "archived"] = Field(
        "active", description="active: runs start; draft: only by hand (no schedule, no webhook); archived: none."
    )


class WorkflowPublic(WorkflowSummary):
    version: int
    canvas: dict[str, Any]
    plan_hash: str


class ValidationReport(BaseModel):
    valid: bool
    issues: list[IssueOut]
    plan: dict[str, Any] | None = None


class ExecuteBody(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": {"name": "Ada"}}]})
    inputs: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(None, ge=1, description="Version to run; the latest when absent.")
    breakpoints: list[str] = Field(
        default_factory=list,
        max_length=200,
        description="Node ids the run pauses before (pause reason 'breakpoint'); resume continues to the next.",
    )


class ExecutionAccepted(BaseModel):
    execution_id: str
    status: RunStatus
    links: dict[str, str]


def retries_of(trigger: dict[str, Any] | None) -> int:
    """How many times a run was retried, as its trigger records it (``store.queries.Executions.reopen``)."""
    retries = (trigger or {}).get("retries", 0)
    return retries if isinstance(retries, int) else 0


def reason_of(status: str, result: dict[str, Any] | None) -> str | None:
    """Why a cancelled run ended, from its stored result's error."""
    error = (result or {}).get("error") if status == "cancelled" else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


class ExecutionSummary(BaseModel):
    id: str
    workflow_id: str
    workflow: str
    version: int
    status: RunStatus
    trigger: dict[str, Any] = Field(
        description="What started the run: {'type': 'api'|'schedule'|'webhook'|'prefect-ui'|'retry'|'parent', ...}."
    )
    retries: int = Field(0, description="How many times the run was retried (POST .../retry).")
    flow_run_id: str | None = Field(
        None, description="Its Prefect flow run; null while the run is accepted and its flow run not created yet."
    )
    reason: str | None = Field(
        None, description="Why a cancelled run ended: a scheduled run skipped says why (overlap, missed)."
    )
    created_at: Timestamp
    updated_at: Timestamp


class NodeResult(BaseModel):
    """One top-level node of a run result: its status, output, error, attempts, times."""

    model_config = ConfigDict(extra="allow")
    status: NodeStatus


class RunResult(BaseModel):
    """The run result of canvas-v1 section 9, as stored by the worker when the run ended
    or assembled from Prefect and the event log while it goes on."""

    model_config = ConfigDict(extra="allow")
    id: str
    workflow: str | None = None
    workflow_id: str | None = None
    version: int | None = None
    status: RunStatus
    output: Any = None
    error: dict[str, Any] | None = None
    nodes: dict[str, NodeResult] = Field(default_factory=dict)
    trace: list[dict[str, Any]] = Field(default_factory=list)
    usage: dict[str, Any] | None = None
    plan_hash: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    trigger: dict[str, Any] = Field(default_factory=dict)
    retries: int = Field(0, description="How many times the run was retried (POST .../retry).")
    flow_run_id: str | None = Field(
        None, description="Its Prefect flow run; null while the run is accepted and its flow run not created yet."
    )
    pending_approvals: list[dict[str, Any]] = Field(default_factory=list)
    pause: dict[str, Any] | None = Field(
        None,
        description="While paused by a person or a breakpoint: {reason: manual, by} or {reason: breakpoint, node_id}.",
    )

    @classmethod
    def of(cls, stored: dict[str, Any], **more: Any) -> RunResult:
        """A stored result (the flow's own ``RunRecord.result()``), with ``more`` on top."""
        return cls.model_validate({**stored, **{k: v for k, v in more.items() if v is not None}})


class RetryBody(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{}, {"version": 3}]})
    version: int | None = Field(
        None,
        ge=1,
        description="Run this version's canvas (its unchanged nodes are reused); the run's own version when absent.",
    )


class DeadLetterOut(BaseModel):
    id: str
    execution_id: str
    workflow_id: str | None
    node_id: str
    path: list[int]
    error: dict[str, Any]
    attempts: int
    config: dict[str, Any] = Field(description="The node's resolved configuration, secrets redacted.")
    failed_at: Timestamp


class CancelAccepted(BaseModel):
    """The cancel route's answer."""

    status: Literal["cancelled", "cancelling"] = Field(
        description=(
            "'cancelled': the run had not started and has ended; 'cancelling': its worker was asked to "
            "stop it, and the run ends 'cancelled' (its stream's last event is execution:cancelled)."
        )
    )


class RunEventData(BaseModel):
    """The JSON ``data`` of a stream event: these fields, and the event type's own (canvas
    spec, section 10), e.g. ``status``, ``output`` and ``error`` of ``node:completed``."""

    model_config = ConfigDict(extra="allow")
    execution_id: str
    timestamp: str = Field(description="When the event happened (RFC 3339).")
    node_id: str | None = Field(None, description="The node of a node:* or stream:* event.")
    path: list[int] | None = Field(
        None, description="Iteration/branch indices of a node inside a body; [] at the top level."
    )


class StreamEvent(BaseModel):
    """One Server-Sent Event of a run's stream (``text/event-stream``): its ``id``, ``event``
    and ``data`` fields. Published as a component schema by ``api.executions.publish_stream_events``."""

    id: str | None = Field(None, description="The event's seq: a reconnecting client sends it as Last-Event-ID.")
    event: EventType = Field(description="The event's type: the SSE event field.")
    data: str = Field(
        description="The event, as JSON: a RunEventData.", json_schema_extra={"contentMediaType": "application/json"}
    )


class ResumeBody(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"node_id": "approve", "input": {"approved": True}}]})
    node_id: str | None = Field(
        None, description="The approval to answer; absent: continue a run paused by a person or a breakpoint."
    )
    path: list[int] | None = Field(None, description="Iteration/branch indices when the node waits in a body.")
    input: dict[str, Any] = Field(default_factory=dict, description="Form values, with 'approved'.")


class ResumeOut(BaseModel):
    status: str
    message: str


class PauseAccepted(BaseModel):
    status: str = Field(description="'pausing' (running nodes finish first) or 'paused'.")
    message: str


class StreamTokenOut(BaseModel):
    token: str
    expires_at: datetime
    stream: str = Field(description="The stream's path with the token, for an EventSource.")


# --- schedules and webhooks (docs/triggers.md) -------------------------------------------

Overlap = Literal["allow", "skip", "queue"]


class ScheduleBody(RequestBody):
    """Exactly one of ``cron``, ``interval_s``, ``rrule``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "inputs": {"who": "Ada"}, "overlap": "skip"}
            ]
        },
    )
    cron: str | None = Field(None, description="A cron expression (5 fields), in ``timezone``.")
    interval_s: float | None = Field(None, description="Seconds between runs (at least 10).")
    rrule: str | None = Field(None, description="An iCalendar RRULE, e.g. FREQ=WEEKLY;BYDAY=MO.")
    timezone: str | None = Field(None, description="IANA time zone of the schedule; UTC by default.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Inputs of every run it starts.")
    active: bool = True
    overlap: Overlap = Field("allow", description="allow; skip: no new run while one goes; queue: wait.")


class SchedulePatch(RequestBody):
    """What is given changes; a new cron, interval_s or rrule replaces the timing."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"active": False}]})
    cron: str | None = None
    interval_s: float | None = None
    rrule: str | None = None
    timezone: str | None = None
    inputs: dict[str, Any] | None = None
    active: bool | None = None
    overlap: Overlap | None = None


class ScheduleOut(BaseModel):
    id: str
    workflow_id: str
    cron: str | None = None
    interval_s: float | None = None
    rrule: str | None = None
    timezone: str
    inputs: dict[str, Any]
    active: bool
    overlap: Overlap
    next_runs: list[str] = Field(
        description="Up to 5 next start times (ISO 8601, in the schedule's time zone); none while paused."
    )


class WebhookBody(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "github push"},
                {"name": "github push", "verification": {"scheme": "github"}, "inputs": {"body": "payload"}},
            ]
        },
    )
    name: str = Field(min_length=1, max_length=200)
    verification: Verification | None = Field(
        None, description="How requests are signed; unset: FlowMaestro's scheme (docs/triggers.md)."
    )
    inputs: InputMapping | None = Field(
        None, description="How a request becomes run inputs; unset: the JSON body is the inputs."
    )
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=300,
        description="The sender's own signing secret (Stripe's, Slack's); unset: a new one is generated.",
    )


class WebhookRotateBody(RequestBody):
    model_config = ConfigDict(extra="forbid")
    secret: str | None = Field(
        None, min_length=16, max_length=300, description="The sender's new secret; unset: a new one is generated."
    )


class WebhookOut(BaseModel):
    id: str
    workflow_id: str
    name: str
    url: str
    created_at: Timestamp
    rotated_at: Timestamp | None = None
    verification: dict[str, Any] = Field(description="The verification scheme and the options set (see WebhookBody).")
    inputs: InputMapping | None = None


class WebhookCreated(BaseModel):
    id: str
    url: str
    secret: str = Field(description="Shown once: sign requests with it (docs/triggers.md).")


class WebhookAccepted(BaseModel):
    execution_id: str


CredentialName = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="Unique per owner; nodes name the credential by it (data.credential).",
    ),
]
CredentialValue = Annotated[
    str, Field(min_length=1, max_length=MAX_VALUE_CHARS, pattern=r"^[^\r\n]+$", description="Write-only.")
]
CredentialFields = Annotated[
    dict[Annotated[str, Field(pattern=CUSTOM_FIELD_PATTERN)], CredentialValue],
    # additionalProperties: pydantic says what names match the pattern take, not that no
    # other name is allowed (the API refuses them).
    Field(min_length=1, max_length=MAX_FIELDS, json_schema_extra={"additionalProperties": False}),
]


class ApiKeyData(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid")
    api_key: CredentialValue


class BearerData(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid")
    token: CredentialValue


class BasicData(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid")
    username: CredentialValue
    password: CredentialValue


class HeaderData(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid")
    name: str = Field(pattern=HEADER_NAME_PATTERN, description="The header's name, e.g. X-Api-Token.")
    value: CredentialValue


class CredentialBase(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid")
    name: CredentialName
    description: str = Field("", max_length=500)


class ApiKeyCredential(CredentialBase):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [{"name": "openai", "type": "api_key", "data": {"api_key": "sk-..."}}]},
    )
    type: Literal["api_key"]
    data: ApiKeyData


class BearerCredential(CredentialBase):
    type: Literal["bearer"]
    data: BearerData


class BasicCredential(CredentialBase):
    type: Literal["basic"]
    data: BasicData


class HeaderCredential(CredentialBase):
    type: Literal["header"]
    data: HeaderData


class CustomCredential(CredentialBase):
    type: Literal["custom"]
    data: CredentialFields = Field(description="String fields of any names.")


class CredentialBody(
    RootModel[
        Annotated[
            ApiKeyCredential | BearerCredential | BasicCredential | HeaderCredential | CustomCredential,
            Field(discriminator="type"),
        ]
    ]
):
    """A new credential: its ``data`` has the fields of its ``type``; no answer ever holds a value."""


class CredentialRotation(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid")
    data: CredentialFields = Field(
        description="Every field of the credential's type (api_key {api_key}, bearer {token}, basic "
        "{username, password}, header {name, value}, custom any); a field the type does not take is a 422."
    )
    description: str | None = Field(None, max_length=500, description="A new description; unchanged when absent.")


class CredentialOut(BaseModel):
    id: str
    name: str
    type: str
    description: str
    fields: list[str] = Field(description="The names of the fields of data (never their values).")
    created_at: Timestamp
    updated_at: Timestamp
    last_used_at: Timestamp | None = Field(
        None, description="When a node last used it (kept to the minute: not written at every use)."
    )
