"""Limits at the edges: bodies over the size limit however they are sent, templates that would
build huge values, live streams of one run."""

from __future__ import annotations

import uuid

import httpx
import pytest
from jinja2.exceptions import SecurityError

from builder.compiler import compile_canvas
from builder.templates.budget import DEFAULT_LIMITS
from builder.templates.sandbox import get_environment
from node_handlers.registry import build_registry
from tests.conftest import STREAMS_PER_RUN
from tests.processes import wait_until


def chunks(total: int, size: int = 64_000):
    """A body with no Content-Length: httpx sends it chunked."""
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


@pytest.mark.prefect
def test_chunked_bodies_over_the_limit_answer_413_on_a_real_server(served):
    with httpx.Client(base_url=served.base, headers={"Authorization": f"Bearer {served.owner_key}"}, timeout=60) as api:
        for path, limit in (("/api/workflows", 2_000_000), (f"/hooks/{uuid.uuid4()}", 1_048_576)):
            answer = api.post(path, content=chunks(limit + 100_000), headers={"content-type": "application/json"})
            assert answer.status_code == 413, f"{path}: {answer.status_code} {answer.text}"
            assert answer.json() == {"detail": f"request body larger than {limit} bytes", "issues": []}
        # Under the limit, the same way, the body is read: an invalid one is a 422, not a 413.
        small = api.post("/api/workflows", content=chunks(1000), headers={"content-type": "application/json"})
        assert small.status_code == 422, small.text


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 300000000 }}",
        "{{ [0] * 10 ** 8 }}",
        "{{ 9 ** 9999999 }}",
        "{{ 'x'.ljust(10 ** 9) }}",
        "{{ 'x' | center(10 ** 9) }}",
    ],
)
def test_templates_that_build_huge_values_are_refused(template):
    raw = {
        "name": "huge",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "t", "type": "transform", "data": {"output": template}},
        ],
        "edges": [{"id": "e", "source": "start", "target": "t"}],
    }
    # Compiling evaluates nothing (Jinja folded constant operators: 9 ** 9999999 took 40 s of the API's loop).
    assert compile_canvas(raw, build_registry()).ok
    with pytest.raises(SecurityError, match="too large"):
        get_environment().from_string(template).render()


def test_templates_within_the_bounds_still_work():
    render = lambda template: get_environment().from_string(template).render()  # noqa: E731
    assert (
        render("{{ 'ab' * 3 }}|{{ 3 * 'ab' }}|{{ 2 ** 10 }}|{{ [1] * 2 }}|{{ 'x'.ljust(3) }}|{{ 'x' | center(3) }}")
        == "ababab|ababab|1024|[1, 1]|x  | x "
    )
    assert len(render("{{ 'x' * %d }}" % DEFAULT_LIMITS.max_chars)) == DEFAULT_LIMITS.max_chars  # noqa: UP031 (Jinja's braces)


@pytest.mark.prefect
def test_streams_of_one_run_are_capped_and_given_back(served):
    headers = {"Authorization": f"Bearer {served.owner_key}"}
    with httpx.Client(base_url=served.base, headers=headers, timeout=60) as api:
        raw = {
            "name": f"long-{uuid.uuid4().hex[:6]}",
            "nodes": [
                {"id": "start", "type": "start", "data": {}},
                {"id": "wait", "type": "delay", "data": {"seconds": 60}},
            ],
            "edges": [{"id": "e", "source": "start", "target": "wait"}],
        }
        workflow_id = api.post("/api/workflows", json={"canvas": raw}).json()["id"]
        run_id = api.post(f"/api/workflows/{workflow_id}/execute", json={}).json()["execution_id"]
        stream = f"/api/executions/{run_id}/stream"
        opened = [api.stream("GET", stream) for _ in range(STREAMS_PER_RUN)]
        try:
            for context in opened:
                assert context.__enter__().status_code == 200
            refused = api.get(stream)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "5", refused.text
            opened.pop().__exit__(None, None, None)  # a client leaves: its slot is given back

            def another_opens() -> bool:  # once the server has noticed the client left
                with api.stream("GET", stream) as again:
                    return again.status_code == 200

            wait_until(another_opens, timeout=30, what="a stream opening in the slot given back")
        finally:
            for context in opened:
                context.__exit__(None, None, None)
            api.post(f"/api/executions/{run_id}/cancel")


@pytest.mark.prefect
def test_a_large_output_is_kept_in_result_storage_and_read_by_reference_across_processes(served):
    """The worker process keeps the output; the API process reads it back, for its owner only."""
    headers = {"Authorization": f"Bearer {served.owner_key}"}
    size = 300_000  # over FLOWMAESTRO_EVENT_OUTPUT_MAX_BYTES (256 kB)
    with httpx.Client(base_url=served.base, headers=headers, timeout=60) as api:
        raw = {
            "name": f"large-{uuid.uuid4().hex[:6]}",
            "nodes": [
                {"id": "start", "type": "start", "data": {}},
                {"id": "big", "type": "transform", "data": {"output": f"{{{{ 'x' * {size} }}}}"}},
                {"id": "end", "type": "end", "data": {"output": "{{ big | length }}"}},
            ],
            "edges": [{"id": "a", "source": "start", "target": "big"}, {"id": "b", "source": "big", "target": "end"}],
        }
        workflow_id = api.post("/api/workflows", json={"canvas": raw}).json()["id"]
        run_id = api.post(f"/api/workflows/{workflow_id}/execute", json={}).json()["execution_id"]

        def completed() -> dict | None:
            body = api.get(f"/api/executions/{run_id}").json()
            return body if body["status"] == "completed" else None

        result = wait_until(completed, timeout=120, what="the run completing")
        assert result["output"] == size  # the next node read it whole
        shown = result["nodes"]["big"]["output"]
        assert shown["truncated"] is True and shown["bytes"] == size + 2 and shown["preview"] == '"' + "x" * 199
        whole = api.get(f"/api/executions/{run_id}/outputs/{shown['ref']}")
        assert whole.status_code == 200 and whole.headers["content-type"] == "application/json"
        assert whole.json() == "x" * size
        events = api.get(f"/api/executions/{run_id}/stream").text  # the whole stream: the run has ended
        assert shown["ref"] in events and "x" * 1000 not in events  # the event refers to it too
        other = api.get(
            f"/api/executions/{run_id}/outputs/{shown['ref']}", headers={"Authorization": f"Bearer {served.other_key}"}
        )
        assert other.status_code == 404, other.text
        for ref in ("0" * 32, "..%2F..%2Fstore.db", "x"):
            assert api.get(f"/api/executions/{run_id}/outputs/{ref}").status_code == 404, ref
