"""The Anthropic Messages provider against a local server speaking it (tests/anthropic_server.py):
the agent's loop with parallel tool calls, and the llm and router nodes with
``provider: anthropic``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from node_handlers.base import NodeError
from node_handlers.llm import LlmConfig, LlmHandler, RouterConfig, RouterHandler
from tests.agent_server import Call, Say, ToolServer, tool_server
from tests.anthropic_server import AnthropicModel, anthropic_model
from tests.conftest_llm import Emitted, allow_hosts, handler_env, make_context, set_env  # noqa: F401
from tests.test_agent_node import RUN_ID, MemoryOutcomes, execute, of_type

KEY = "sk-ant-THIS-KEY-MUST-NOT-LEAK-0123456789"


@pytest.fixture(scope="module")
def server() -> Iterator[AnthropicModel]:
    with anthropic_model() as found:
        yield found


@pytest.fixture(scope="module")
def tools() -> Iterator[ToolServer]:
    with tool_server() as found:
        yield found


@pytest.fixture(autouse=True)
def operator_key(handler_env: pytest.MonkeyPatch, server: AnthropicModel) -> None:
    allow_hosts(handler_env, "127.0.0.1")
    set_env(handler_env, FLOWMAESTRO_ANTHROPIC_BASE_URL=server.url, FLOWMAESTRO_ANTHROPIC_API_KEY=KEY)


def agent_canvas(model: str, tools: ToolServer, **extra: Any) -> dict[str, Any]:
    tool = {
        "type": "http",
        "name": "weather",
        "description": "Weather for a city",
        "url": tools.url + "/weather/{{ args.city }}",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    data = {
        "provider": "anthropic",
        "model": model,
        "system": "Be brief.",
        "prompt": "{{ inputs.q }}",
        "tools": [tool],
        **extra,
    }
    nodes = [
        {"id": "start", "type": "start", "data": {}},
        {"id": "agent", "type": "agent", "data": data},
        {"id": "end", "type": "end", "data": {"output": "{{ agent }}"}},
    ]
    edges = [{"id": "e0", "source": "start", "target": "agent"}, {"id": "e1", "source": "agent", "target": "end"}]
    return {"name": "anthropic-agent", "nodes": nodes, "edges": edges}


async def test_the_agent_loops_over_messages_with_parallel_tool_use(server: AnthropicModel, tools: ToolServer) -> None:
    calls = (("weather", {"city": "Paris"}), ("weather", {"city": "Oslo"}))
    name = server.script("claude-agent", Call(calls, text="Looking."), Say(("Mild ", "in both.")))
    result, events = await execute(agent_canvas(name, tools), MemoryOutcomes())

    assert result["status"] == "completed", result["error"]
    output = result["output"]
    assert output["text"] == "Mild in both." and output["turns"] == 2 and output["finish_reason"] == "end_turn"
    assert [c["result"]["body"] for c in output["tool_calls"]] == [
        {"path": "/weather/Paris"},
        {"path": "/weather/Oslo"},
    ]
    assert sorted(r["key"] for r in tools.of_run(RUN_ID) if "/weather/" in r["path"]) == [
        f"{RUN_ID}:agent::toolu_1_0",
        f"{RUN_ID}:agent::toolu_1_1",
    ]
    first, second = [r for r in server.requests if r.model == name]
    assert first.headers["x-api-key"] == KEY and first.body["stream"] is True
    assert first.body["system"] == "Be brief." and first.body["max_tokens"] == 4096
    assert first.body["tools"][0]["input_schema"]["required"] == ["city"]
    assistant, results = second.body["messages"][1:]
    assert [b["type"] for b in assistant["content"]] == ["text", "tool_use", "tool_use"]
    assert [b["tool_use_id"] for b in results["content"]] == ["toolu_1_0", "toolu_1_1"]  # one user message
    assert output["usage"]["output_tokens"] > 0 and output["usage"]["input_tokens"] > 0
    assert [c["text"] for c in of_type(events, "stream:chunk")] == ["Looking.", "Mild ", "in both."]
    assert KEY not in str(result) and KEY not in str([e.data for e in events])


async def test_llm_and_router_speak_anthropic(server: AnthropicModel) -> None:
    name = server.script("claude-llm", Say(("Hello", " there")))
    emitted = Emitted()
    data = {"provider": "anthropic", "model": name, "system": "Be kind.", "prompt": "Hi"}
    completed = await LlmHandler().run(LlmConfig.model_validate(data), make_context(emitted))
    assert completed.output["text"] == "Hello there" and completed.output["finish_reason"] == "end_turn"
    assert [c["text"] for c in emitted.of_type("stream:chunk")] == ["Hello", " there"]
    assert server.requests[-1].body["system"] == "Be kind."

    routed = server.script("claude-router", Say(('{"route": "billing", ', '"reasoning": "a refund"}')))
    config = RouterConfig.model_validate(
        {"provider": "anthropic", "model": routed, "prompt": "Refund me", "routes": [{"id": "billing"}, {"id": "tech"}]}
    )
    choice = await RouterHandler().run(config, make_context())
    assert choice.output == {"route": "billing", "reasoning": "a refund"} and choice.handles == {"route-billing"}
    # Messages' structured output: a tool of the schema, which the model must call.
    body = server.requests[-1].body
    assert body["tool_choice"] == {"type": "tool", "name": "final_answer"}
    [answer_tool] = body["tools"]
    assert answer_tool["name"] == "final_answer"
    assert answer_tool["input_schema"]["properties"]["route"]["enum"] == ["billing", "tech"]


ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


async def test_the_agent_answers_through_the_answer_tool_and_repairs_it(
    server: AnthropicModel, tools: ToolServer
) -> None:
    name = server.script(
        "claude-structured",
        Call((("weather", {"city": "Rome"}),)),
        Say(('{"answer": 7}',), tool="final_answer"),
        Say(('{"answer": "warm"}',), tool="final_answer"),
    )
    result, events = await execute(agent_canvas(name, tools, output_schema=ANSWER_SCHEMA), MemoryOutcomes())

    assert result["status"] == "completed", result["error"]
    output = result["output"]
    assert output["json"] == {"answer": "warm"} and output["turns"] == 3 and output["finish_reason"] == "end_turn"
    assert json.loads(output["text"]) == {"answer": "warm"}
    assert [c["name"] for c in output["tool_calls"]] == ["weather"]  # the answer is no tool call
    first, second, third = [r.body for r in server.requests if r.model == name]
    # Beside its own tools the model may call those first: any tool, the answer tool among them.
    assert first["tool_choice"] == {"type": "any"}
    assert [t["name"] for t in first["tools"]] == ["weather", "final_answer"]
    assert first["tools"][1]["input_schema"] == ANSWER_SCHEMA
    assert "system" in first and "JSON" not in first["system"]
    # The invalid answer went back as text and a user message (the server checked that no
    # tool_use was left without its tool_result).
    assert third["messages"][-2] == {"role": "assistant", "content": [{"type": "text", "text": '{"answer": 7}'}]}
    assert third["messages"][-1]["role"] == "user"
    assert "7 is not of type 'string'" in third["messages"][-1]["content"]
    # The answer streams as the model writes the tool's input.
    assert [c["text"] for c in of_type(events, "stream:chunk")][-2:] == ['{"answer"', ': "warm"}']


async def test_the_llm_node_repairs_through_the_answer_tool(server: AnthropicModel) -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    name = server.script("claude-llm-structured", Say(('{"value": ["one"]}',)), Say(('{"value": [1]}',)))
    data = {"provider": "anthropic", "model": name, "prompt": "Count", "output_schema": schema}
    completed = await LlmHandler().run(LlmConfig.model_validate(data), make_context())

    assert completed.output["json"] == [1]
    first, second = [r.body for r in server.requests if r.model == name]
    assert first["tool_choice"] == {"type": "tool", "name": "final_answer"}
    assert first["tools"][0]["input_schema"]["properties"] == {"value": schema}  # an array travels wrapped
    assert (
        second["messages"][-1]["role"] == "user"
        and "'one' is not of type 'integer'" in second["messages"][-1]["content"]
    )
    assert completed.usage is not None and completed.usage["output_tokens"] == 6  # both requests, 3 each


async def test_the_operator_key_goes_to_the_configured_url_only(
    server: AnthropicModel, handler_env: pytest.MonkeyPatch
) -> None:
    data = {"provider": "anthropic", "model": "m", "prompt": "Hi", "base_url": "http://127.0.0.1:9"}
    with pytest.raises(NodeError) as caught:
        await LlmHandler().run(LlmConfig.model_validate(data), make_context())
    assert caught.value.error_type == "MissingSecret" and KEY not in caught.value.message

    set_env(handler_env, FLOWMAESTRO_ANTHROPIC_BASE_URL="", FLOWMAESTRO_ANTHROPIC_API_KEY="")
    handler_env.delenv("FLOWMAESTRO_ANTHROPIC_BASE_URL")
    handler_env.delenv("FLOWMAESTRO_ANTHROPIC_API_KEY")
    with pytest.raises(NodeError) as caught:
        await LlmHandler().run(LlmConfig.model_validate({"provider": "anthropic", "prompt": "Hi"}), make_context())
    assert caught.value.error_type == "MissingSecret" and "ANTHROPIC_API_KEY" in caught.value.message
