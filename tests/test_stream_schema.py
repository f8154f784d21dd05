"""The run's events as the OpenAPI schema publishes them (issue 21 item 15): the stream's 200
is a ``text/event-stream`` of ``StreamEvent``s whose ``event`` is an ``EventType`` and whose
``data`` is a ``RunEventData``, all component schemas; the cancel route's answer has a model;
``api.runs`` says statuses with the vocabulary's members, not its own copies."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api import runs
from api.app import create_app
from api.settings import ApiSettings
from store import vocabulary
from store.vocabulary import EventType, RunStatus

STREAM = "/api/executions/{execution_id}/stream"
CANCEL = "/api/executions/{execution_id}/cancel"


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> FastAPI:
    home = tmp_path_factory.mktemp("stream-schema")
    return create_app(
        ApiSettings(home=home, database_url=f"sqlite+aiosqlite:///{home / 'store.db'}", api_keys="owner:owner-key")
    )


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {node["$ref"]} if isinstance(node.get("$ref"), str) else set().union(*map(refs, node.values()))
    if isinstance(node, list):
        return set().union(*map(refs, node))
    return set()


def component(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_the_stream_publishes_its_events_with_every_event_type(app):
    schema = app.openapi()
    ok = schema["paths"][STREAM]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["text/event-stream"]  # and no JSON answer the route never gives
    assert ok["content"]["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/StreamEvent"}
    event = component(schema, ok["content"]["text/event-stream"]["schema"]["$ref"])
    assert event["required"] == ["event", "data"]
    event_type = component(schema, event["properties"]["event"]["$ref"])
    assert event_type["enum"] == [member.value for member in EventType]
    data = event["properties"]["data"]
    assert data["type"] == "string" and data["contentMediaType"] == "application/json"
    envelope = data["contentSchema"]  # inline: schemathesis resolves no $ref in it
    assert envelope == schema["components"]["schemas"]["RunEventData"]
    assert set(envelope["required"]) == {"execution_id", "timestamp"}
    assert {"node_id", "path"} <= set(envelope["properties"]) and envelope["additionalProperties"] is True


def test_every_reference_in_the_schema_resolves(app):
    schema = app.openapi()
    for ref in refs(schema):
        component(schema, ref)


def test_published_schemas_do_not_replace_fastapis():
    from api.executions import publish_stream_events

    schema = {"components": {"schemas": {"RunStatus": {"mine": True}}}}
    publish_stream_events(schema)
    assert schema["components"]["schemas"]["RunStatus"] == {"mine": True}
    assert {"StreamEvent", "RunEventData", "EventType"} <= set(schema["components"]["schemas"])


def test_the_cancel_answer_is_documented(app):
    schema = app.openapi()
    accepted = schema["paths"][CANCEL]["post"]["responses"]["202"]
    answer = component(schema, accepted["content"]["application/json"]["schema"]["$ref"])
    assert answer["properties"]["status"]["enum"] == ["cancelled", "cancelling"]


class CancellingRuns:
    """The run service as the cancel route sees it: a running run, so its worker is asked."""

    async def cancel(self, owner: str, run_id: str) -> str:
        return runs.CANCELLING


async def test_the_cancel_answer_keeps_its_body(app):
    app.state.runs = CancellingRuns()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        answer = await client.post("/api/executions/run-1/cancel", headers={"Authorization": "Bearer owner-key"})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"status": "cancelling"}


def test_the_run_service_speaks_the_vocabulary():
    assert runs.NODE_STATUS_OF_EVENT is vocabulary.NODE_STATUS_OF_EVENT
    assert all(isinstance(status, RunStatus) for status in runs.STATUS_OF_STATE.values())
    assert runs.CANCELLING not in frozenset(RunStatus)
