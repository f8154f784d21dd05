"""The llm and router nodes against the local OpenAI-compatible server of tests/openai_server.py."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from builder.compiler import compile_canvas
from builder.inputs import validate_inputs
from flows.engine import Execution
from node_handlers import egress
from node_handlers.base import Completed, NodeError
from node_handlers.llm import LlmConfig, LlmHandler, RouterConfig, RouterHandler, parse_json_reply
from node_handlers.registry import build_registry
from tests.conftest_llm import (  # noqa: F401
    Emitted,
    allow_hosts,
    fake_openai,
    handler_env,
    make_context,
    openai_server,
    run_with_retries,
    set_env,
)
from tests.openai_server import JSON_CHUNKS, FakeOpenAI, Reply, serve_in_thread

API_KEY = "sk-test-THIS-KEY-MUST-NOT-LEAK-0123456789"
ANSWER_SCHEMA = {
    "type": "object",
    "required": ["answer", "tags"],
    "additionalProperties": False,
    "properties": {"answer": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
}
ROUTES = [
    {"id": "billing", "description": "invoices, payments, refunds"},
    {"id": "tech", "description": "bugs, errors, outages"},
]


@pytest.fixture(autouse=True)
def loopback_allowed(handler_env: pytest.MonkeyPatch) -> None:
    # The fake server listens on 127.0.0.1, which the egress policy refuses by default.
    allow_hosts(handler_env, "127.0.0.1")


def llm_data(server: FakeOpenAI, **data: Any) -> dict[str, Any]:
    return {"model": "text", "prompt": "Say hello", "base_url": server.base_url, **data}


async def run_llm(data: dict[str, Any], emitted: Emitted | None = None) -> Completed:
    return await LlmHandler().run(LlmConfig.model_validate(data), make_context(emitted))


async def run_router(data: dict[str, Any], emitted: Emitted | None = None) -> Completed:
    return await RouterHandler().run(RouterConfig.model_validate(data), make_context(emitted))


async def llm_error(data: dict[str, Any]) -> NodeError:
    with pytest.raises(NodeError) as caught:
        await run_llm(data)
    return caught.value


# Streaming and usage


async def test_text_is_streamed_in_order(openai_server: FakeOpenAI) -> None:
    emitted = Emitted()
    completed = await run_llm(llm_data(openai_server), emitted)
    chunks = emitted.of_type("stream:chunk")
    assert [c["text"] for c in chunks] == ["Hello", ", ", "world", "!"]
    assert [c["index"] for c in chunks] == [0, 1, 2, 3]
    assert emitted.events[-1] == ("stream:done", {"text_length": len("Hello, world!"), "attempt": 1})
    output = completed.output
    assert output["text"] == "Hello, world!"
    assert output["finish_reason"] == "stop" and output["model"] == "text"
    assert isinstance(output["latency_ms"], int) and output["latency_ms"] >= 0
    assert "json" not in output and "cost_usd" not in output
    request = openai_server.requests[0].body
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["messages"] == [{"role": "user", "content": "Say hello"}]


async def test_usage_comes_from_the_server(openai_server: FakeOpenAI) -> None:
    completed = await run_llm(llm_data(openai_server))
    usage = completed.output["usage"]
    assert usage["output_tokens"] == 4 and usage["input_tokens"] > 0
    assert "estimated" not in usage
    assert completed.usage == {
        "input_tokens": usage["input_tokens"],
        "output_tokens": 4,
        "model": completed.output["model"],
    }


async def test_usage_is_estimated_when_the_server_sends_none(openai_server: FakeOpenAI) -> None:
    completed = await run_llm(llm_data(openai_server, model="no-usage", system="Be brief."))
    usage = completed.output["usage"]
    assert usage == {
        "input_tokens": math.ceil(len("Be brief." + "Say hello") / 4),
        "output_tokens": 4,
        "estimated": True,
    }
    assert completed.usage == {"input_tokens": usage["input_tokens"], "output_tokens": 4, "model": "no-usage"}


async def test_cost_is_reported_when_the_price_is_known(
    openai_server: FakeOpenAI, handler_env: pytest.MonkeyPatch
) -> None:
    set_env(handler_env, FLOWMAESTRO_LLM_PRICES=json.dumps({"text": {"input_per_1m": 1.0, "output_per_1m": 2.0}}))
    completed = await run_llm(llm_data(openai_server))
    usage = completed.output["usage"]
    expected = (usage["input_tokens"] * 1.0 + usage["output_tokens"] * 2.0) / 1_000_000
    assert completed.output["cost_usd"] == pytest.approx(expected)
    assert completed.usage["cost_usd"] == pytest.approx(expected)


async def test_messages_system_and_options_reach_the_server(openai_server: FakeOpenAI) -> None:
    data = llm_data(
        openai_server,
        temperature=0.2,
        max_tokens=50,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Again"},
        ],
    )
    del data["prompt"]
    await run_llm(data)
    body = openai_server.requests[0].body
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "You are terse."
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50


def test_prompt_or_messages_exactly_one() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'prompt' or 'messages'"):
        LlmConfig.model_validate({"prompt": "a", "messages": [{"role": "user", "content": "b"}]})
    with pytest.raises(ValidationError, match="exactly one"):
        LlmConfig.model_validate({"model": "m"})


# JSON output


async def test_json_schema_reply_is_parsed_and_validated(openai_server: FakeOpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
    completed = await run_llm(llm_data(openai_server, model="json", response_format=response_format))
    assert completed.output["json"] == {"answer": 42, "tags": ["a", "b"]}
    assert completed.output["text"] == "".join(JSON_CHUNKS)
    assert openai_server.requests[0].body["response_format"] == response_format


async def test_json_object_reply_in_a_code_fence_is_parsed(openai_server: FakeOpenAI) -> None:
    openai_server.enqueue(Reply(chunks=["```json\n", '{"a": 1}', "\n```"]))
    completed = await run_llm(llm_data(openai_server, response_format={"type": "json_object"}))
    assert completed.output["json"] == {"a": 1}


async def test_json_that_does_not_fit_the_schema_is_a_retryable_error(openai_server: FakeOpenAI) -> None:
    schema = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}
    error = await llm_error(
        llm_data(
            openai_server,
            model="json",
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        )
    )
    assert error.retry_class == "error" and "answer" in error.message


def test_an_invalid_schema_is_refused_when_the_canvas_is_compiled() -> None:
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        LlmConfig.model_validate(
            {
                "prompt": "x",
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}},
                },
            }
        )


async def test_a_malformed_reply_is_retried(openai_server: FakeOpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
    run = await run_with_retries(
        LlmHandler(), llm_data(openai_server, model="malformed-once", response_format=response_format)
    )
    assert run.result.completed is not None, run.result.error
    assert run.result.attempts == 2 and len(openai_server.requests) == 2
    assert run.result.completed.output["json"] == {"answer": 42, "tags": ["a", "b"]}
    error = run.retries[0][1]
    assert isinstance(error, NodeError) and error.retry_class == "error" and "not valid JSON" in error.message
    assert [c["attempt"] for c in run.emitted.of_type("stream:chunk")] == [1, 1, 2, 2, 2, 2]


# output_schema: the provider's JSON-schema mode, validation, repairs


STRICT_SCHEMA = ANSWER_SCHEMA  # closed, every property required: what strict mode takes
LOOSE_SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}}


async def test_output_schema_asks_in_strict_mode_and_the_server_answers_within_it(openai_server: FakeOpenAI) -> None:
    # The script says "Hello, world!": a server in strict mode writes JSON of the schema instead.
    completed = await run_llm(llm_data(openai_server, output_schema=STRICT_SCHEMA))
    assert completed.output["json"] == {"answer": 0, "tags": []}
    assert json.loads(completed.output["text"]) == completed.output["json"]
    assert [r.body["response_format"] for r in openai_server.requests] == [
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": STRICT_SCHEMA, "strict": True}}
    ]


async def test_an_answer_that_does_not_fit_output_schema_is_repaired(openai_server: FakeOpenAI) -> None:
    openai_server.enqueue(Reply(chunks=['{"answer": ', '"forty-two"}']), Reply(chunks=['{"answer": 42}']))
    emitted = Emitted()
    completed = await run_llm(llm_data(openai_server, output_schema=LOOSE_SCHEMA), emitted)

    assert completed.output["json"] == {"answer": 42} and completed.output["text"] == '{"answer": 42}'
    first, second = (r.body for r in openai_server.requests)
    # Not strict: OpenAI refuses strict mode for a schema with optional or extra properties.
    assert first["response_format"]["json_schema"] == {"name": "answer", "schema": LOOSE_SCHEMA, "strict": False}
    assert second["messages"][:1] == first["messages"] == [{"role": "user", "content": "Say hello"}]
    assert second["messages"][1] == {"role": "assistant", "content": '{"answer": "forty-two"}'}
    repair = second["messages"][2]
    assert repair["role"] == "user" and repair["content"].startswith("Your answer is not valid: ")
    assert "at answer" in repair["content"] and "'forty-two' is not of type 'integer'" in repair["content"]
    chunks = emitted.of_type("stream:chunk")
    assert [(c["text"], c.get("repair")) for c in chunks] == [
        ('{"answer": ', None),
        ('"forty-two"}', None),
        ('{"answer": 42}', 1),
    ]
    assert completed.output["usage"]["output_tokens"] == 3 and completed.usage["output_tokens"] == 3


async def test_an_answer_still_invalid_after_the_repairs_fails_output_invalid(openai_server: FakeOpenAI) -> None:
    openai_server.enqueue(*[Reply(chunks=['{"answer": "no"}'])] * 3)
    error = await llm_error(llm_data(openai_server, output_schema=LOOSE_SCHEMA))
    assert error.error_type == "output_invalid" and error.retry_class is None
    assert error.message.startswith("the model's answer does not fit output_schema after 2 repair turns: ")
    assert "'no' is not of type 'integer'" in error.message
    assert error.details["requests"] == 3 and len(openai_server.requests) == 3


async def test_a_schema_that_is_no_object_travels_wrapped(openai_server: FakeOpenAI) -> None:
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    openai_server.enqueue(Reply(chunks=['{"value": ["a", "b"]}']))
    completed = await run_llm(llm_data(openai_server, output_schema=schema))
    assert completed.output["json"] == ["a", "b"]
    sent = openai_server.requests[0].body["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["schema"] == {
        "type": "object",
        "properties": {"value": schema},
        "required": ["value"],
        "additionalProperties": False,
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"output_schema": {"type": "nonsense"}}, "data.output_schema"),
        ({"output_schema": {"$ref": "http://169.254.169.254/latest"}}, "$ref may only point inside the schema"),
        (
            {"output_schema": {"type": "object"}, "response_format": {"type": "json_object"}},
            "give response_format or output_schema, not both",
        ),
    ],
)
def test_a_bad_output_schema_is_refused_when_the_canvas_is_compiled(data: dict[str, Any], expected: str) -> None:
    raw = {
        "name": "schema",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "ask", "type": "llm", "data": {"prompt": "x", **data}},
        ],
        "edges": [{"id": "e", "source": "start", "target": "ask"}],
    }
    refused = compile_canvas(raw, build_registry())
    assert not refused.ok
    [issue] = [str(i) for i in refused.errors]
    assert "node 'ask'" in issue and expected in issue, issue


def test_a_reply_python_cannot_parse_as_json_is_a_retryable_error_too() -> None:
    # json.loads raises a plain ValueError (not a JSONDecodeError, which has .msg) for an
    # integer past Python's 4,300-digit limit; found by mypy.
    with pytest.raises(NodeError, match="not valid JSON") as raised:
        parse_json_reply('{"answer": ' + "1" * 5000 + "}", None)
    assert raised.value.retry_class == "error" and raised.value.error_type == "InvalidModelOutput"


# Provider errors


async def test_a_500_is_retried(openai_server: FakeOpenAI) -> None:
    run = await run_with_retries(LlmHandler(), llm_data(openai_server, model="error-500-once"))
    assert run.result.completed is not None and run.result.attempts == 2
    assert getattr(run.retries[0][1], "retry_class", None) == "5xx"


async def test_a_429_waits_for_retry_after(openai_server: FakeOpenAI) -> None:
    run = await run_with_retries(LlmHandler(), llm_data(openai_server, model="rate-limited-once"))
    assert run.result.completed is not None and run.result.attempts == 2
    _, error, delay = run.retries[0]
    assert isinstance(error, NodeError) and error.retry_class == "429" and error.retry_after_s == 1.0
    assert delay >= 1.0
    first, second = (r.received_at for r in openai_server.requests)
    assert second - first >= 0.9


async def test_a_400_is_not_retried(openai_server: FakeOpenAI) -> None:
    run = await run_with_retries(LlmHandler(), llm_data(openai_server, model="bad-request"))
    assert run.result.attempts == 1
    error = run.result.error
    assert isinstance(error, NodeError) and error.retry_class is None
    assert "400" in error.message and "unsupported parameter" in error.message


async def test_a_slow_stream_times_out(openai_server: FakeOpenAI) -> None:
    started = time.monotonic()
    error = await llm_error(llm_data(openai_server, model="slow", timeout_s=0.5))
    assert error.retry_class == "timeout"
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("handler", [LlmHandler, RouterHandler])
async def test_by_default_a_model_out_of_reach_or_too_slow_is_tried_three_times(
    openai_server: FakeOpenAI, handler: type
) -> None:
    """The default policy's classes and attempts, as a run sees them (a 5xx, a 429 and a
    malformed reply: the tests above)."""
    from tests.processes import free_port

    data = llm_data(openai_server) if handler is LlmHandler else router_data(openai_server)
    cases = (
        ({"base_url": f"http://127.0.0.1:{free_port()}/v1"}, "connection"),
        ({"model": "slow", "timeout_s": 0.3}, "timeout"),
    )
    for changes, retry_class in cases:
        run = await run_with_retries(handler(), {**data, **changes})
        assert run.result.error is not None and run.result.attempts == 3, (retry_class, run.result)
        assert [getattr(exc, "retry_class", None) for _, exc, _ in run.retries] == [retry_class] * 2


# Router


def router_data(server: FakeOpenAI, **data: Any) -> dict[str, Any]:
    return {"model": "text", "routes": ROUTES, "prompt": "My invoice is wrong", "base_url": server.base_url, **data}


def route_reply(route: str) -> Reply:
    return Reply(chunks=[f'{{"route": "{route}", ', '"reasoning": "it is about ', 'an invoice"}'])


async def test_the_router_fires_the_chosen_route(openai_server: FakeOpenAI) -> None:
    openai_server.enqueue(route_reply("billing"))
    emitted = Emitted()
    completed = await run_router(router_data(openai_server, system="You triage tickets."), emitted)
    assert completed.handles == frozenset({"route-billing"})
    assert completed.output == {"route": "billing", "reasoning": "it is about an invoice"}
    assert len(emitted.of_type("stream:chunk")) == 3 and emitted.of_type("stream:done")
    body = openai_server.requests[0].body
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["route"]["enum"] == ["billing", "tech"]
    system = body["messages"][0]["content"]
    assert system.startswith("You triage tickets.") and "billing: invoices" in system
    assert body["messages"][1] == {"role": "user", "content": "My invoice is wrong"}
    assert completed.usage is not None and completed.usage["output_tokens"] == 3


async def test_the_router_asks_in_strict_mode_and_the_answer_fits(openai_server: FakeOpenAI) -> None:
    # Under strict mode the server answers within the schema, whatever the script says.
    openai_server.enqueue(Reply(chunks=["billing, I think"]))
    completed = await run_router(router_data(openai_server))
    assert completed.handles == frozenset({"route-billing"}) and len(openai_server.requests) == 1
    spec = openai_server.requests[0].body["response_format"]["json_schema"]
    assert spec["name"] == "route_choice" and spec["strict"] is True


async def test_an_unknown_route_from_a_server_that_ignores_the_schema_is_repaired(openai_server: FakeOpenAI) -> None:
    sales = Reply(chunks=['{"route": "sales", "reasoning": "a deal"}'], ignore_schema=True)
    openai_server.enqueue(sales, route_reply("tech"))
    run = await run_with_retries(RouterHandler(), router_data(openai_server))
    assert run.result.completed is not None and run.result.attempts == 1, run.result.error
    assert run.result.completed.handles == frozenset({"route-tech"}) and len(openai_server.requests) == 2
    repaired = openai_server.requests[1].body["messages"]
    assert repaired[-2] == {"role": "assistant", "content": '{"route": "sales", "reasoning": "a deal"}'}
    assert repaired[-1]["role"] == "user" and "'sales' is not one of ['billing', 'tech']" in repaired[-1]["content"]
    assert run.result.completed.usage is not None and run.result.completed.usage["output_tokens"] == 1 + 3


async def test_a_router_reply_that_never_fits_fails_output_invalid(openai_server: FakeOpenAI) -> None:
    openai_server.enqueue(*[Reply(chunks=["billing, I think"], ignore_schema=True)] * 3)
    with pytest.raises(NodeError) as caught:
        await run_router(router_data(openai_server))
    assert caught.value.error_type == "output_invalid" and caught.value.retry_class is None
    assert "after 2 repair turns" in caught.value.message and "not valid JSON" in caught.value.message
    assert len(openai_server.requests) == 3


def test_router_handles_and_route_ids() -> None:
    config = RouterConfig.model_validate({"routes": ROUTES, "prompt": "{{ inputs.text }}"})
    assert RouterHandler().handles(config) == {"route-billing", "route-tech", "error"}
    with pytest.raises(ValidationError, match="unique"):
        RouterConfig.model_validate({"routes": [ROUTES[0], ROUTES[0]], "prompt": "x"})
    with pytest.raises(ValidationError):
        RouterConfig.model_validate({"routes": [{"id": "no spaces"}], "prompt": "x"})


# The API key


async def test_the_api_key_reaches_the_server_and_nothing_else(
    openai_server: FakeOpenAI, handler_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_env(
        handler_env,
        FLOWMAESTRO_SECRET_LLM_KEY=API_KEY,
        FLOWMAESTRO_SECRET_LLM_KEY_OWNERS="*",
        FLOWMAESTRO_SECRET_LLM_KEY_HOSTS="127.0.0.1",
    )
    caplog.set_level(logging.DEBUG)
    emitted = Emitted()
    completed = await run_llm(llm_data(openai_server, api_key_secret="LLM_KEY"), emitted)
    openai_server.enqueue(route_reply("tech"))
    routed = await run_router(router_data(openai_server, api_key_secret="LLM_KEY"), emitted)
    error = await llm_error(llm_data(openai_server, model="unauthorized", api_key_secret="LLM_KEY"))

    assert [r.headers["authorization"] for r in openai_server.requests] == [f"Bearer {API_KEY}"] * 3
    assert "Incorrect API key provided" in error.message  # the server echoed the key, redacted here
    assert "HTTP Request: POST" in caplog.text  # the logs were captured, at debug level
    for where in (
        json.dumps(completed.output),
        json.dumps(routed.output),
        json.dumps(emitted.events),
        error.message,
        json.dumps(error.details),
        caplog.text,
    ):
        assert API_KEY not in where


async def test_the_key_from_openai_api_key(openai_server: FakeOpenAI, handler_env: pytest.MonkeyPatch) -> None:
    set_env(handler_env, OPENAI_API_KEY=API_KEY, FLOWMAESTRO_OPENAI_BASE_URL=openai_server.base_url)
    await run_llm(llm_data(openai_server))
    assert openai_server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_openai_without_a_key_is_refused_before_any_request() -> None:
    error = await llm_error({"prompt": "hi"})
    assert error.error_type == "MissingSecret" and "OPENAI_API_KEY" in error.message


# Egress


async def test_a_private_base_url_is_refused_unless_allowed(
    openai_server: FakeOpenAI, handler_env: pytest.MonkeyPatch
) -> None:
    allow_hosts(handler_env, "")
    error = await llm_error(llm_data(openai_server))
    assert error.error_type == "EgressDenied" and error.retry_class is None
    assert "127.0.0.1" in error.message and "FLOWMAESTRO_HTTP_ALLOW_HOSTS" in error.message
    assert openai_server.requests == []
    metadata = await llm_error({"prompt": "hi", "base_url": "http://169.254.169.254/v1"})
    assert metadata.error_type == "EgressDenied" and "metadata" in metadata.message
    allow_hosts(handler_env, "127.0.0.0/8")
    completed = await run_llm(llm_data(openai_server))
    assert completed.output["text"] == "Hello, world!"


async def test_the_model_connection_goes_to_the_checked_address(
    openai_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def resolve(host: str, port: int) -> list[Any]:
        assert host == "models.example"
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(egress, "resolve_host", resolve)
    base_url = openai_server.base_url.replace("127.0.0.1", "models.example")
    completed = await run_llm(llm_data(openai_server, base_url=base_url))
    assert completed.output["text"] == "Hello, world!"
    assert openai_server.requests[0].headers["host"].startswith("models.example:")


# The bundled example, end to end in-process


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "llm-and-http.json"


async def ticket(request: Any) -> JSONResponse:
    return JSONResponse({"title": "How do I export?", "body": "Where is the export button?"})


async def test_the_example_canvas_runs_against_local_servers(
    openai_server: FakeOpenAI, handler_env: pytest.MonkeyPatch
) -> None:
    # The example's model is the configured one: it takes no base_url from its inputs.
    set_env(handler_env, FLOWMAESTRO_OPENAI_BASE_URL=openai_server.base_url)
    registry = build_registry()
    compiled = compile_canvas(json.loads(EXAMPLE.read_text()), registry)
    assert compiled.ok, [str(i) for i in compiled.errors]
    plan = compiled.plan
    openai_server.enqueue(
        route_reply("question"), Reply(chunks=['{"reply": "Use the ', 'Export menu.", ', '"confidence": 0.9}'])
    )
    with serve_in_thread(Starlette(routes=[Route("/ticket", ticket)])) as tickets:
        inputs = validate_inputs(plan.inputs, {"ticket_url": f"{tickets.url}/ticket", "model": "local-model"})
        execution = Execution(plan, registry, run_id="run-example", inputs=inputs)
        events: list[Any] = []
        execution.bus.subscribe(events.append)
        result = (await execution.run()).result()
    assert result["status"] == "completed", (result["error"], {k: v["error"] for k, v in result["nodes"].items()})
    assert result["output"]["route"] == "question"
    assert result["output"]["answer"] == {"reply": "Use the Export menu.", "confidence": 0.9}
    assert result["nodes"]["apologize"]["status"] == "skipped"
    assert "Where is the export button?" in openai_server.requests[0].body["messages"][1]["content"]
    assert result["usage"]["output_tokens"] == 3 + 3  # router and answer, summed by the engine
    chunks = [e for e in events if e.type == "stream:chunk"]
    assert [e.node_id for e in chunks] == ["triage"] * 3 + ["answer"] * 3


async def test_dns_rebinding_after_the_check_is_refused_at_connection(
    openai_server: FakeOpenAI, handler_env: pytest.MonkeyPatch
) -> None:
    allow_hosts(handler_env, "")
    answers = iter(["93.184.216.34", "127.0.0.1"])  # public for the base_url check, loopback after

    async def rebinding(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address(next(answers))]

    handler_env.setattr(egress, "resolve_host", rebinding)
    base_url = openai_server.base_url.replace("127.0.0.1", "rebind.example")
    error = await llm_error(llm_data(openai_server, base_url=base_url))
    assert error.error_type == "EgressDenied" and "127.0.0.1" in error.message
    assert openai_server.requests == []
