"""Answers that the HTTP layer gives before any route runs, as the OpenAPI schema documents
them (issue 21 item 6; tests/test_fuzz_api.py checks the whole schema against a real serve):
a body that cannot be decoded is a 422 like any other invalid body, and a 405 lists in
``Allow`` every method of the path. No service is needed: neither reaches a route."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    home = tmp_path_factory.mktemp("contract")
    app = create_app(
        ApiSettings(home=home, database_url=f"sqlite+aiosqlite:///{home / 'store.db'}", api_keys="owner:owner-key")
    )
    return TestClient(app)  # no lifespan: nothing here reaches a route


def documented_methods(client: TestClient, path: str) -> set[str]:
    return {method.upper() for method in client.app.openapi()["paths"][path]}


@pytest.mark.parametrize(
    "path",
    [
        "/api/workflows",
        "/api/workflows/{workflow_id}",
        "/api/workflows/{workflow_id}/schedules/{schedule_id}",
        "/api/workflows/{workflow_id}/webhooks/{hook_id}",
    ],
)
def test_a_405_allows_every_documented_method_of_the_path(client, path):
    url = path.replace("{workflow_id}", "w1").replace("{schedule_id}", "s1").replace("{hook_id}", "h1")
    answer = client.request("OPTIONS", url)
    assert answer.status_code == 405
    allowed = {m.strip() for m in answer.headers["allow"].split(",")}
    assert allowed - {"HEAD"} == documented_methods(client, path), answer.headers["allow"]
    assert answer.json()["detail"] and answer.json()["issues"] == []


@pytest.mark.parametrize("body", [b"\xff\xfe{", b'{"canvas": "\xc3"}'])
def test_a_body_that_is_not_utf8_json_is_a_422_naming_the_body(client, body):
    answer = client.post(
        "/api/workflows/validate",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer owner-key"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["issues"][0]["field"] == "body"
    assert 400 not in {
        int(code)
        for code in client.app.openapi()["paths"]["/api/workflows/validate"]["post"]["responses"]
        if code.isdigit()
    }  # the 400 it used to be is documented nowhere


def test_the_schema_documents_the_content_types_answered(client):
    """The stream answers an event stream (its refusals JSON), /metrics text (its refusals JSON,
    401 and 403 without the metrics key): as documented, which schemathesis checks."""
    paths = client.app.openapi()["paths"]
    stream = paths["/api/executions/{execution_id}/stream"]["get"]["responses"]
    assert list(stream["200"]["content"]) == ["text/event-stream"]
    event = stream["200"]["content"]["text/event-stream"]["schema"]  # a component: the event types' schema
    components = client.app.openapi()["components"]["schemas"]
    assert set(components[event["$ref"].rsplit("/", 1)[1]]["properties"]) == {"id", "event", "data"}
    metrics = paths["/metrics"]["get"]["responses"]
    assert {"401", "403"} <= set(metrics)
    for path, operations in paths.items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code[0] in "45":
                    assert list(response.get("content", {"application/json": {}})) == ["application/json"], (
                        method,
                        path,
                        code,
                    )
    answer = client.get("/metrics", headers={"Authorization": "Bearer not-the-metrics-key"})
    assert answer.status_code in (401, 403) and answer.headers["content-type"] == "application/json"
