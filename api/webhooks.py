"""Webhooks: managed under a workflow (bearer key), delivered to ``/hooks/{id}`` (signed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from api.auth import Owner
from api.deps import WebhooksDep
from api.schemas import ErrorBody, WebhookAccepted, WebhookBody, WebhookCreated, WebhookOut, WebhookRotateBody
from api.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from api.webhook_schemes import InputMapping, stored_verification
from store.triggers import Webhook

MAX_WAIT_S = 30
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 422, 503)}
router = APIRouter(prefix="/api/workflows/{workflow_id}/webhooks", tags=["webhooks"])
intake = APIRouter(tags=["webhooks"])


def _out(hook: Webhook) -> WebhookOut:
    return WebhookOut(
        id=hook.id,
        workflow_id=hook.workflow_id,
        name=hook.name,
        url=hook.url,
        created_at=hook.created_at,
        rotated_at=hook.rotated_at,
        verification=stored_verification(hook.verification).model_dump(exclude_none=True),
        inputs=InputMapping.model_validate(hook.inputs_map) if hook.inputs_map is not None else None,
    )


@router.post("", status_code=201, response_model=WebhookCreated, responses=ERRORS)
async def create_webhook(workflow_id: str, body: WebhookBody, owner: Owner, webhooks: WebhooksDep) -> WebhookCreated:
    """A new webhook; its ``secret`` is in this answer only (rotate to get a new one)."""
    hook = await webhooks.create(
        owner, workflow_id, body.name, verification=body.verification, inputs=body.inputs, secret=body.secret
    )
    assert hook.secret is not None
    return WebhookCreated(id=hook.id, url=hook.url, secret=hook.secret)


@router.get("", response_model=list[WebhookOut], responses=ERRORS)
async def list_webhooks(workflow_id: str, owner: Owner, webhooks: WebhooksDep) -> list[WebhookOut]:
    return [_out(hook) for hook in await webhooks.list(owner, workflow_id)]


@router.post("/{hook_id}/rotate", response_model=WebhookCreated, responses=ERRORS)
async def rotate_webhook(
    workflow_id: str, hook_id: str, owner: Owner, webhooks: WebhooksDep, body: WebhookRotateBody | None = None
) -> WebhookCreated:
    """A new secret (the body's, or a generated one), shown once; the old one stops working now."""
    hook = await webhooks.rotate(owner, workflow_id, hook_id, body.secret if body else None)
    assert hook.secret is not None
    return WebhookCreated(id=hook.id, url=hook.url, secret=hook.secret)


@router.delete("/{hook_id}", status_code=204, responses=ERRORS)
async def delete_webhook(workflow_id: str, hook_id: str, owner: Owner, webhooks: WebhooksDep) -> Response:
    await webhooks.delete(owner, workflow_id, hook_id)
    return Response(status_code=204)


@intake.post(
    "/hooks/{hook_id}",
    status_code=202,
    response_model=WebhookAccepted,
    responses={code: {"model": ErrorBody} for code in (401, 404, 409, 413, 422, 429, 503)},
)
async def deliver_webhook(
    hook_id: str,
    request: Request,
    webhooks: WebhooksDep,
    wait: float | None = Query(
        None,
        ge=0,
        le=MAX_WAIT_S,
        description="Wait up to this many seconds for the run to end: 200 with the run result if it did, else 202.",
    ),
    timestamp: str | None = Header(
        None, alias=TIMESTAMP_HEADER, description="FlowMaestro's scheme; other schemes use their senders' headers."
    ),
    signature: str | None = Header(None, alias=SIGNATURE_HEADER, description="FlowMaestro's scheme."),
    idempotency_key: str | None = Header(
        None,
        max_length=200,
        description="A second request with the same key within 24 h starts nothing and answers 200 with the first run.",
    ),
) -> Response:
    """Start a run of the workflow's latest version with inputs from the request: the JSON
    body, or as the hook maps them. No bearer key: the request is signed with the hook's
    secret, in the hook's scheme (docs/triggers.md)."""
    del timestamp, signature  # documented here, read with the other headers by the scheme
    try:
        body = await request.body()
    except ClientDisconnect:  # BodySizeLimit refused it midway and has answered 413
        return Response(status_code=413)
    delivery = await webhooks.deliver(
        hook_id,
        headers=request.headers,
        body=body,
        query={k: v for k, v in request.query_params.items() if k != "wait"},
        idempotency_key=idempotency_key,
        wait_s=wait,
        client=request.client.host if request.client else "unknown",
    )
    if delivery.result is not None:
        return JSONResponse(delivery.result.model_dump(mode="json"), status_code=200)
    return JSONResponse({"execution_id": delivery.execution_id}, status_code=200 if delivery.replayed else 202)
