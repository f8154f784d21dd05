"""Run statuses, node statuses and event types are said once (store/vocabulary.py): the API
publishes them in its OpenAPI schema, the pages read them from /ui/vocabulary.js, and no
event type is published that the enum does not have (issue 21 item 15)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api import ui
from api.app import create_app
from flows.events import EventBus
from store import vocabulary
from store.vocabulary import EventType, NodeStatus, RunStatus

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("builder", "store", "node_handlers", "flows", "deployments", "api", "cli")
EVENT_LIKE = re.compile(r"(execution|node|stream):[a-z_]+")


def test_members_are_their_strings():
    # StrEnum: every comparison, JSON body and stored column that had the string still has it.
    assert RunStatus.COMPLETED == "completed" and str(RunStatus.COMPLETED) == "completed"
    assert json.dumps({"status": NodeStatus.CACHED}) == '{"status": "cached"}'
    assert "node:started" in frozenset(EventType) and EventType("node:error") is EventType.NODE_ERROR
    assert vocabulary.FINAL_EVENT_TYPES == {"execution:completed", "execution:failed", "execution:cancelled"}
    assert set(vocabulary.NODE_STATUS_OF_EVENT) == {t for t in EventType if t.startswith("node:")}


def test_the_openapi_schema_lists_every_status():
    schema = create_app().openapi()
    components = schema["components"]["schemas"]
    assert components["RunStatus"]["enum"] == [status.value for status in RunStatus]
    assert components["NodeStatus"]["enum"] == [status.value for status in NodeStatus]
    run_status = {"$ref": "#/components/schemas/RunStatus"}
    for model in ("ExecutionAccepted", "ExecutionSummary", "RunResult"):
        assert components[model]["properties"]["status"] == run_status, model
    assert components["RunResult"]["properties"]["nodes"]["additionalProperties"] == {
        "$ref": "#/components/schemas/NodeResult"
    }
    assert components["NodeResult"]["properties"]["status"] == {"$ref": "#/components/schemas/NodeStatus"}


def _exports(module: str) -> dict[str, object]:
    found = dict(re.findall(r"^export const (\w+) = Object\.freeze\((.*)\);$", module, re.MULTILINE))
    return {name: json.loads(value) for name, value in found.items()}


async def test_the_pages_vocabulary_module_has_every_value():
    app = FastAPI()
    ui.mount(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui") as client:
        answer = await client.get("/ui/vocabulary.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    exports = _exports(answer.text)
    for enum in (RunStatus, NodeStatus, EventType):
        assert exports[enum.__name__] == {member.name: member.value for member in enum}
    for name in ("FINAL_RUN_STATUSES", "FINAL_NODE_STATUSES", "FINAL_EVENT_TYPES"):
        assert set(exports[name]) == getattr(vocabulary, name), name
    for name in ("NODE_STATUS_OF_EVENT", "RUN_STATUS_OF_FINAL_EVENT"):
        assert exports[name] == dict(getattr(vocabulary, name)), name


def test_the_pages_hold_no_copy_of_the_event_types():
    for script in sorted((ROOT / "api" / "static").glob("*.js")):
        copies = [
            text for text in re.findall(r"""["'`]([^"'`]*)["'`]""", script.read_text()) if EVENT_LIKE.fullmatch(text)
        ]
        assert not copies, f"{script.name} writes event types by hand: {copies}; import them from ../vocabulary.js"
    assert 'from "../vocabulary.js"' in (ROOT / "api" / "static" / "run.js").read_text()


def test_no_code_names_an_event_type_the_enum_does_not_have():
    unknown = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and EVENT_LIKE.fullmatch(node.value)
                    and node.value not in frozenset(EventType)
                ):
                    unknown.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not unknown, "event types missing from store/vocabulary.py EventType:\n" + "\n".join(unknown)


def test_the_bus_refuses_an_event_type_outside_the_enum():
    bus = EventBus("run-1")
    with pytest.raises(ValueError, match="not an EventType"):
        bus.publish("node:teleported", node_id="a")
    assert bus.publish(EventType.NODE_STARTED, node_id="a").type == "node:started"


def test_the_api_docs_describe_every_event_type():
    api_doc = (ROOT / "docs" / "api.md").read_text()
    table = api_doc[api_doc.index("#### Event types") :]
    documented = set(re.findall(r"^\| `([a-z]+:[a-z_]+)` \|", table, re.MULTILINE))
    assert documented == set(EventType)
