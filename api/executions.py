"""Executions: start, list, read, stream, cancel, resume, retry."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BeforeValidator
from pydantic.json_schema import models_json_schema
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from api.auth import Owner
from api.deps import RunsDep
from api.pagination import NO_NUL, Paged, link_next, list_responses
from api.pauses import resume_paused
from api.run_end_watcher import until_ended
from api.schemas import (
    CancelAccepted,
    ErrorBody,
    ExecuteBody,
    ExecutionAccepted,
    ExecutionSummary,
    ResumeBody,
    ResumeOut,
    RetryBody,
    RunEventData,
    RunResult,
    StreamEvent,
    StreamTokenOut,
    reason_of,
    retries_of,
)
from api.stream_slots import released_after
from api.stream_tokens import StreamReader
from flows.event_log import RedisEventLog
from flows.event_log.base import MAX_SEQ
from flows.events import FINAL_EVENT_TYPES, utcnow
from flows.tracing import valid_traceparent
from store.errors import Invalid, Unavailable
from store.lists import ExecutionFilter
from store.vocabulary import RunStatus

PROBE_S = 5
"""How long the event log may take to answer before a stream starts (else 503)."""

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    """A date-time as RFC 3339 writes it, with its offset: pydantic alone would also take a
    number (seconds since 1970) or a bare date, which the schema does not document."""
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        raise ValueError("not an RFC 3339 date-time such as 2026-11-22T08:00:00Z")
    return value


Rfc3339 = Annotated[datetime, BeforeValidator(_rfc3339)]
router = APIRouter(tags=["executions"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422, 503)}
Trigger = Literal["api", "schedule", "webhook", "prefect-ui", "retry", "parent", "rerun", "test"]
TRIGGERS = ", ".join(get_args(Trigger))  # for the filter's description


@router.post(
    "/api/workflows/{workflow_id}/execute", status_code=202, response_model=ExecutionAccepted, responses=ERRORS
)
async def execute_workflow(
    workflow_id: str,
    body: ExecuteBody,
    owner: Owner,
    runs: RunsDep,
    idempotency_key: str | None = Header(
        None,
        max_length=200,
        description=(
            "Retry-safe execute: a second request with the same key for the same "
            "workflow answers the run the first one started."
        ),
    ),
    traceparent: str | None = Header(
        None,
        max_length=100,
        description="W3C Trace Context: the run's span is its child (traces on, docs/operations.md#traces); "
        "an invalid one is ignored.",
    ),
) -> ExecutionAccepted:
    """Start a run on a worker. Inputs are checked first (422 naming each bad input, and
    each node naming a credential the owner has not stored); the
    answer comes as soon as the run is recorded in the store, with links to follow it; its
    Prefect flow run is created right after (docs/operations.md#accepting-runs)."""
    # Every execute has a key: when the store answers too late, the run may be recorded all
    # the same, and a retry with the key the 503 names answers that run, not another.
    given = idempotency_key or str(uuid.uuid4())
    try:
        run_id = await runs.start(
            owner=owner,
            workflow_id=workflow_id,
            version=body.version,
            inputs=body.inputs,
            idempotency_key=f"api:{owner}:{workflow_id}:{given}",
            check_credentials=True,
            traceparent=valid_traceparent(traceparent),
            actor=owner,
            breakpoints=body.breakpoints,
        )
    except Unavailable as exc:
        exc.message += "; the run may still start: retry with the header Idempotency-Key: " + given
        exc.details["idempotency_key"] = given
        raise
    return ExecutionAccepted(execution_id=run_id, status="pending", links=runs.links(run_id))


@router.get("/api/executions", response_model=list[ExecutionSummary], responses=list_responses(ERRORS))
async def list_executions(
    request: Request,
    response: Response,
    owner: Owner,
    runs: RunsDep,
    paged: Paged,
    workflow_id: str | None = Query(None, max_length=36, pattern=NO_NUL),
    status: RunStatus | None = None,
    trigger: Trigger | None = Query(None, description=f"One of {TRIGGERS}."),
    since: Rfc3339 | None = Query(None, description="Runs created at or after this time (RFC 3339)."),
    until: Rfc3339 | None = Query(None, description="Runs created before this time (RFC 3339)."),
) -> list[ExecutionSummary]:
    """Runs of the owner, newest first, a page at a time (the next in the ``Link`` header)."""
    where = ExecutionFilter(workflow_id, status, trigger, since, until)
    page = await runs.page(owner, where, limit=paged.limit, cursor=paged.cursor)
    link_next(request, response, page.next_cursor)
    rows = page.items
    return [
        ExecutionSummary(
            id=r.id,
            workflow_id=r.workflow_id,
            workflow=r.workflow_name,
            version=r.version,
            status=r.status,
            trigger=r.trigger or {"type": r.trigger_type},
            retries=retries_of(r.trigger),
            flow_run_id=r.flow_run_id,
            reason=reason_of(r.status, r.result),
            created_at=r.created_at,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


@router.get("/api/executions/{execution_id}", response_model=RunResult, responses=ERRORS)
async def read_execution(execution_id: str, owner: Owner, runs: RunsDep) -> RunResult:
    """The run result (canvas spec section 9), plus ``pending_approvals`` while paused."""
    return await runs.read(owner, execution_id)


@router.get(
    "/api/executions/{execution_id}/outputs/{ref}",
    responses=ERRORS | {200: {"content": {"application/json": {}}, "description": "the output, whole, as JSON"}},
)
async def read_large_output(execution_id: str, ref: str, owner: Owner, runs: RunsDep) -> Response:
    """A node output too large for events and the run result, which show its size, a preview
    and this ``ref`` instead (``FLOWMAESTRO_EVENT_OUTPUT_MAX_BYTES``)."""
    return Response(await runs.large_output(owner, execution_id, ref), media_type="application/json")


@router.post("/api/executions/{execution_id}/cancel", status_code=202, response_model=CancelAccepted, responses=ERRORS)
async def cancel_execution(execution_id: str, owner: Owner, runs: RunsDep) -> CancelAccepted:
    """Cancel a run: one that has not started ends at once ('cancelled'); a running one is
    stopped by its worker ('cancelling', then the run ends 'cancelled'). 409 once it has ended."""
    return CancelAccepted(status=await runs.cancel(owner, execution_id))


@router.post(
    "/api/executions/{execution_id}/retry", status_code=202, response_model=ExecutionAccepted, responses=ERRORS
)
async def retry_execution(
    execution_id: str, owner: Owner, runs: RunsDep, body: RetryBody | None = None
) -> ExecutionAccepted:
    """Execute a failed or cancelled run again (the same execution id): nodes that completed
    with the same resolved configuration are restored, the rest run. 409 for a run that has
    not ended or that completed."""
    status = await runs.retry(owner, execution_id, body.version if body else None)
    return ExecutionAccepted(execution_id=execution_id, status=status, links=runs.links(execution_id))


@router.post("/api/executions/{execution_id}/resume", response_model=ResumeOut, responses=ERRORS)
async def resume_execution(execution_id: str, body: ResumeBody, owner: Owner, runs: RunsDep) -> ResumeOut:
    """Answer a waiting approval: 422 when the input does not fit its form (the run stays
    paused), 409 when nothing of that node is waiting. Without ``node_id``: continue a run
    paused by a person or a breakpoint (``api/pauses.py``), 409 when it is not paused."""
    if body.node_id is None:
        return ResumeOut(**await resume_paused(runs, owner, execution_id))
    return ResumeOut(**await runs.resume(owner, execution_id, body.node_id, body.path, body.input))


@router.post("/api/executions/{execution_id}/stream-token", response_model=StreamTokenOut, responses=ERRORS)
async def stream_token(execution_id: str, request: Request, owner: Owner, runs: RunsDep) -> StreamTokenOut:
    """A short-lived token that reads this run's stream and nothing else, for clients that
    cannot send ``Authorization`` (a browser's ``EventSource``): ``?token=`` on the stream."""
    await runs.executions.get(owner, execution_id)
    token, expires_at = request.app.state.stream_tokens.issue(execution_id, owner)
    return StreamTokenOut(
        token=token, expires_at=expires_at, stream=f"/api/executions/{execution_id}/stream?token={token}"
    )


async def probe_event_log(log: Any, execution_id: str) -> None:
    """Raise ``Unavailable`` naming the event log's service when it does not answer in time
    (a log that is down raises it itself)."""
    try:
        await asyncio.wait_for(log.last_seq(execution_id), timeout=PROBE_S)
    except TimeoutError:
        service = "redis" if isinstance(log, RedisEventLog) else "database"
        raise Unavailable(
            service, f"the event log ({service}) did not answer in time; could not stream the run", PROBE_S
        ) from None


def resume_point(last_event_id: str | None) -> int:
    """The seq after which a reconnecting ``EventSource`` resumes: its ``Last-Event-ID`` (an
    id this API sent), 0 when absent or not a number; 422 for a number no event can have."""
    text = (last_event_id or "").strip()
    if not re.fullmatch(r"[0-9]{1,30}", text):  # ASCII digits: int() refuses '²' (isdigit does not)
        return 0
    if int(text) > MAX_SEQ:
        raise Invalid(
            f"Last-Event-ID must be an event id (0 to {MAX_SEQ})",
            [
                {
                    "code": "invalid_request",
                    "field": "header.Last-Event-ID",
                    "message": f"must be at most {MAX_SEQ}",
                }
            ],
        )
    return int(text)


STREAM_PATH = "/api/executions/{execution_id}/stream"
STREAM_EVENT_MODELS = (StreamEvent, RunEventData)
"""The stream's event and its data, published as component schemas (``publish_stream_events``)."""


def publish_stream_events(schema: dict[str, Any]) -> dict[str, Any]:
    """Add ``StreamEvent``, ``RunEventData`` and ``EventType`` to an OpenAPI ``schema``'s
    component schemas, where the stream route's 200 response refers to them.

    FastAPI publishes only the models of JSON bodies: given the stream's event as its
    response model, it would also document a JSON answer the route never gives."""
    _, definitions = models_json_schema(
        [(model, "serialization") for model in STREAM_EVENT_MODELS], ref_template="#/components/schemas/{model}"
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in definitions.get("$defs", {}).items():
        components.setdefault(name, definition)
    # Inline: a schema complete in itself for the tools that check each event's data.
    components["StreamEvent"]["properties"]["data"]["contentSchema"] = RunEventData.model_json_schema()
    # FastAPI gives a non-JSON answer the schema {"type": "string"} and merges the route's
    # own into it: a "type" beside the $ref would say each event is a string.
    ok = schema.get("paths", {}).get(STREAM_PATH, {}).get("get", {}).get("responses", {}).get("200")
    if ok is not None:
        ok["content"]["text/event-stream"]["schema"] = {"$ref": "#/components/schemas/StreamEvent"}
    return schema


STREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": HTTPStatus(code).phrase,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for code in (401, 403, 404, 409, 422, 429, 503)
}
"""The stream's refusals: JSON error bodies, though its answer is an event stream."""


class EventStream(Response):
    """The stream route's answer as the OpenAPI schema documents it (it returns an
    ``EventSourceResponse``): ``text/event-stream``, not JSON."""

    media_type = "text/event-stream"


@router.get(
    STREAM_PATH,
    response_class=EventStream,
    responses=STREAM_ERRORS
    | {
        200: {
            "description": "Server-Sent Events of the run (each a StreamEvent)",
            "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/StreamEvent"}}},
        }
    },
)
async def stream_execution(
    execution_id: str,
    request: Request,
    owner: StreamReader,
    runs: RunsDep,
    after: int | None = Query(None, ge=0, le=MAX_SEQ, description="Replay events after this id (0 to 2^63-1)."),
    last_event_id: str | None = Header(None),
) -> EventSourceResponse:
    """Server-Sent Events of the run (canvas spec section 10): replay from
    ``Last-Event-ID`` (or ``?after=``), then live events; ends after the final event.
    Authenticated by the bearer key, or by ``?token=`` (a stream token of this run)."""
    await runs.executions.get(owner, execution_id)
    # Checked before the response starts: an id no event can have would otherwise fail the
    # event log's query mid-stream and drop the connection.
    start = after if after is not None else resume_point(last_event_id)
    log = request.app.state.event_log
    await probe_event_log(log, execution_id)  # a 503 is possible only before the stream starts
    give_slot_back = request.app.state.stream_slots.lease(execution_id)  # 429 beyond the cap
    run_ends = request.app.state.run_ends
    run_end = run_ends.watch(execution_id)

    def give_back() -> None:
        give_slot_back()
        run_ends.forget(run_end)

    async def events():
        last = start
        ended: str | None = None
        retried = False
        while True:
            # Until the run's final event, or until Prefect says the run has ended (the
            # watcher); then one last short pass drains what was stored meanwhile.
            follow = log.follow(execution_id, after=last, idle_timeout=1.0 if ended else None)
            async for event in follow if ended else until_ended(follow, run_end):
                if await request.is_disconnected():
                    return
                last = event.seq
                yield event.sse()
                if event.type in FINAL_EVENT_TYPES:
                    if await log.last_seq(execution_id) <= last:
                        return  # the final event of the run's latest execution
                    retried = True  # a retry's events follow: go on to its final event
            if retried:
                retried, ended = False, None
                run_ends.rearm(run_end)  # an end seen so far was the execution before the retry
                continue
            if ended is not None:
                # The run ended without its final event (its process died, or it was
                # cancelled outside FlowMaestro): end the stream with what Prefect says.
                yield {
                    "id": str(last + 1),
                    "event": f"execution:{ended}",
                    "data": json.dumps(
                        {
                            "execution_id": execution_id,
                            "status": ended,
                            "reconciled": True,
                            "timestamp": utcnow().isoformat(),
                        }
                    ),
                }
                return
            # Set once the watcher saw the run ended (it keeps asking while Prefect is down).
            ended = run_end.status

    # Given back when the stream ends, and after the response in any case (a client gone
    # before the first event leaves a generator that never started).
    return EventSourceResponse(released_after(events(), give_back), ping=15, background=BackgroundTask(give_back))
