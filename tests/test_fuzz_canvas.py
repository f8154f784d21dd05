"""Generated canvases through the compiler and the API (tests/canvas_strategies.py): valid
React Flow exports compile, to the same plan whatever their order and UI keys; broken ones
are refused with issues, never an exception; the API agrees with the compiler and answers
422, never a 500."""

from __future__ import annotations

import json
import math
import os

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.settings import ApiSettings
from builder.compiler import compile_canvas
from node_handlers.registry import build_registry
from tests.canvas_strategies import broken_export, misshapen, react_flow_export

REGISTRY = build_registry()
KEY = "canvas-fuzz-key"
EXAMPLES = int(os.environ.get("FLOWMAESTRO_FUZZ_EXAMPLES", "150"))  # scripts/fuzz.py runs thousands
FAST = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _strip_react_flow(raw: dict) -> dict:
    keys = (
        "position",
        "width",
        "height",
        "selected",
        "dragging",
        "measured",
        "positionAbsolute",
        "animated",
        "markerEnd",
        "style",
    )
    plain = {k: v for k, v in raw.items() if k != "viewport"}
    plain["nodes"] = sorted(
        ({k: v for k, v in n.items() if k not in keys} for n in raw["nodes"]), key=lambda n: n["id"]
    )
    plain["edges"] = sorted(
        ({k: v for k, v in e.items() if k not in keys} for e in raw["edges"]), key=lambda e: str(e.get("id"))
    )
    return plain


@FAST
@given(react_flow_export())
def test_valid_exports_compile_to_the_plan_of_the_plain_canvas(raw):
    result = compile_canvas(raw, REGISTRY)
    assert result.ok, [str(i) for i in result.errors]
    plain = compile_canvas(_strip_react_flow(raw), REGISTRY)
    assert plain.ok and plain.plan.hash == result.plan.hash


@FAST
@given(broken_export())
def test_broken_exports_are_refused_with_issues(raw):
    result = compile_canvas(raw, REGISTRY)
    assert not result.ok and result.errors
    for issue in result.issues:
        assert issue.code and issue.message and issue.severity in ("error", "warning")
        json.dumps(issue.to_dict())  # the API sends them as they are


@FAST
@given(misshapen())
def test_anything_compiles_or_is_refused_never_raises(raw):
    result = compile_canvas(raw, REGISTRY)
    assert result.ok == (not result.errors)
    json.dumps([i.to_dict() for i in result.issues])


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    home = tmp_path_factory.mktemp("canvas-fuzz")
    settings_ = ApiSettings(
        database_url=f"sqlite+aiosqlite:///{home / 'api.db'}",
        home=home,
        api_keys=f"fuzz:{KEY}",
        max_request_bytes=2_000_000,
    )
    with TestClient(
        create_app(settings_), headers={"Authorization": f"Bearer {KEY}"}, raise_server_exceptions=False
    ) as client:
        yield client


def _json_body(raw) -> str:
    """As a browser would send it: JSON with NaN and infinities (Python's json writes them)."""
    return json.dumps({"canvas": raw}, allow_nan=True)


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(react_flow_export(), broken_export(), misshapen()))
def test_the_api_agrees_with_the_compiler(api, raw):
    answer = api.post("/api/workflows/validate", content=_json_body(raw), headers={"content-type": "application/json"})
    if not isinstance(raw, dict):
        assert answer.status_code == 422 and answer.json()["issues"][0]["field"] == "body.canvas", answer.text
        return
    assert answer.status_code == 200, answer.text
    result = compile_canvas(json.loads(_json_body(raw))["canvas"], REGISTRY)
    report = answer.json()
    assert report["valid"] == result.ok
    assert [i["code"] for i in report["issues"]] == [i.code for i in result.issues]
    if not result.ok:  # refused before anything is saved or Prefect is asked
        saved = api.post("/api/workflows", content=_json_body(raw), headers={"content-type": "application/json"})
        assert saved.status_code == 422 and len(saved.json()["issues"]) == len(result.issues), saved.text


def test_nan_in_a_canvas_is_not_a_500(api):
    raw = {
        "name": "nan",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "t", "type": "transform", "data": {"output": math.nan}},
        ],
        "edges": [{"id": "e", "source": "start", "target": "t"}],
    }
    answer = api.post("/api/workflows/validate", content=_json_body(raw), headers={"content-type": "application/json"})
    assert answer.status_code in (200, 422), answer.text
