"""The agent node in the engine (no Prefect), against a local model server that calls tools
(tests/agent_server.py) and a local HTTP server counting the tools' requests: the loop,
parallel calls, failing tools given to the model, limits, events, and the journal of its
turns and tool calls across two executions of one run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.compiler import compile_canvas
from flows.engine import Execution
from flows.journal import RunJournal
from node_handlers.agent_memory import AgentMemories, tokens_of, trimmed
from node_handlers.registry import build_registry
from store.db import make_engine, upgrade_schema
from tests.agent_server import Call, Say, ToolModel, tool_model
from tests.conftest_llm import allow_hosts, handler_env, set_env  # noqa: F401
from tests.mcp_server import mcp_server
from tests.support import canvas, compiled, node
from tests.test_journal import MemoryOutcomes

RUN_ID = "run-agent"


@pytest.fixture(autouse=True)
def loopback_allowed(handler_env: pytest.MonkeyPatch) -> None:
    allow_hosts(handler_env, "127.0.0.1")


@pytest.fixture(scope="module")
def model() -> Iterator[ToolModel]:
    with tool_model() as server:
        yield server


def http_tool(name: str, url: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "name": name,
        "description": f"the {name} tool",
        "method": "POST",
        "url": url,
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
        **fields,
    }


def agent_canvas(model: ToolModel, model_name: str, tools: list[dict[str, Any]], **data: Any) -> dict[str, Any]:
    agent = node(
        "agent",
        "agent",
        data={"model": model_name, "base_url": model.base_url, "prompt": "{{ inputs.q }}", "tools": tools, **data},
    )
    end = node("end", "end", data={"output": "{{ agent }}"})
    return canvas([node("start", "start"), agent, end], [("start", "agent"), ("agent", "end")])


async def execute(raw: dict[str, Any], store: MemoryOutcomes, inputs: dict[str, Any] | None = None):
    registry = build_registry()
    plan = compiled(raw, registry)
    journal = await RunJournal.open(RUN_ID, store)
    execution = Execution(plan, registry, run_id=RUN_ID, inputs=inputs or {"q": "go"}, journal=journal)
    events: list[Any] = []
    execution.bus.subscribe(events.append)
    record = await execution.run()
    await journal.flush()
    return record.result(), events


def of_type(events: list[Any], kind: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in events if e.type == kind]


def tool_requests(counting: Any, prefix: str) -> list[dict[str, Any]]:
    return [r for r in counting.requests if str(r["path"]).startswith(prefix)]


async def test_the_loop_calls_a_tool_and_answers_with_its_result(model: ToolModel, counting: Any) -> None:
    name = model.script("loop", Call((("lookup", {"n": 7}),)), Say(("Order ", "7 ", "shipped.")))
    tools = [http_tool("lookup", counting.url + "/loop/{{ args.n }}")]
    result, events = await execute(agent_canvas(model, name, tools, system="Be brief."), MemoryOutcomes())

    assert result["status"] == "completed", result["error"]
    output = result["output"]
    assert output["text"] == "Order 7 shipped." and output["turns"] == 2 and output["finish_reason"] == "stop"
    [call] = output["tool_calls"]
    assert call["name"] == "lookup" and call["arguments"] == {"n": 7} and call["error"] is None
    assert call["result"] == {"status": 200, "body": {"path": "/loop/7", "count": 1}}
    [request] = tool_requests(counting, "/loop/")
    assert request["key"] == f"{RUN_ID}:agent::call_1_0"  # <run>:<node>:<path>:<call id>
    assert output["usage"]["input_tokens"] > 0 and output["usage"]["output_tokens"] == 2 + 3
    assert result["usage"]["input_tokens"] == output["usage"]["input_tokens"]

    first, second = [r.body for r in model.requests if r.model == name]
    assert first["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "go"}]
    assert first["tools"][0]["function"]["name"] == "lookup"
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1_0"
    assert '"/loop/7"' in tool_message["content"]

    kinds = [e.type for e in events if e.type.startswith("agent:")]
    assert kinds == ["agent:turn", "agent:tool_call", "agent:tool_result", "agent:turn"]
    assert of_type(events, "agent:turn")[0]["turn"] == 1
    assert of_type(events, "agent:tool_call")[0] == {"call_id": "call_1_0", "tool": "lookup", "arguments": {"n": 7}}
    assert of_type(events, "agent:tool_result")[0]["status"] == "ok"
    chunks = of_type(events, "stream:chunk")
    assert [c["text"] for c in chunks] == ["Order ", "7 ", "shipped."] and [c["index"] for c in chunks] == [0, 1, 2]


async def test_several_calls_of_one_turn_run_concurrently(model: ToolModel, counting: Any) -> None:
    calls = tuple(("slow", {"n": n}) for n in range(3))
    name = model.script("parallel", Call(calls), Say())
    tools = [http_tool("slow", counting.url + "/par/{{ args.n }}?delay=0.6")]
    result, _ = await execute(agent_canvas(model, name, tools), MemoryOutcomes())

    assert result["status"] == "completed", result["error"]
    requests = tool_requests(counting, "/par/")
    assert sorted(r["path"] for r in requests) == ["/par/0", "/par/1", "/par/2"]
    # All three arrived before the first was answered: they overlapped.
    assert max(r["at"] for r in requests) < min(r["answered"] for r in requests)
    assert [c["id"] for c in result["output"]["tool_calls"]] == ["call_1_0", "call_1_1", "call_1_2"]
    last = [r.body for r in model.requests if r.model == name][-1]["messages"]
    assert [m["tool_call_id"] for m in last if m["role"] == "tool"] == ["call_1_0", "call_1_1", "call_1_2"]


async def test_a_failing_tool_gives_the_model_its_error_and_the_run_goes_on(model: ToolModel, counting: Any) -> None:
    counting.failing.add("/broken")
    name = model.script(
        "failing",
        Call((("broken", {}), ("nosuch", {}), ("lookup", {"raw": '{"n": '}))),
        Say(("Sorry.",)),
    )
    tools = [http_tool("broken", counting.url + "/broken"), http_tool("lookup", counting.url + "/ok")]
    result, events = await execute(agent_canvas(model, name, tools), MemoryOutcomes())

    assert result["status"] == "completed", result["error"]
    broken, unknown, bad_args = result["output"]["tool_calls"]
    assert "returned 500" in broken["error"] and broken["result"] is None
    assert unknown["error"] == "there is no tool named 'nosuch'"
    assert "not valid JSON" in bad_args["error"]
    assert tool_requests(counting, "/ok") == []  # a call with broken arguments is not sent
    told = [m for m in model.requests[-1].body["messages"] if m["role"] == "tool"]
    assert told[0]["content"].startswith("Error: POST ") and "returned 500" in told[0]["content"]
    assert told[1]["content"] == "Error: there is no tool named 'nosuch'"
    assert [e["status"] for e in of_type(events, "agent:tool_result")] == ["error", "error", "error"]


@pytest.mark.parametrize(
    ("limits", "steps", "message"),
    [
        ({"max_turns": 2}, [Call((("t", {}),))], "max_turns (2)"),
        ({"max_tool_calls": 3}, [Call((("t", {}), ("t", {}))), Call((("t", {}), ("t", {})))], "max_tool_calls (3)"),
    ],
)
async def test_limits_end_the_node_with_agent_limit(
    model: ToolModel, counting: Any, limits: dict[str, Any], steps: list[Any], message: str
) -> None:
    name = model.script(f"limit-{message}", *steps)
    result, _ = await execute(
        agent_canvas(model, name, [http_tool("t", counting.url + "/t")], **limits), MemoryOutcomes()
    )
    assert result["status"] == "failed"
    error = result["nodes"]["agent"]["error"]
    assert error["type"] == "agent_limit" and message in error["message"], error


async def test_the_timeout_ends_the_node_with_agent_limit(model: ToolModel, counting: Any) -> None:
    name = model.script("timeout", Call((("slow", {}),)))
    tools = [http_tool("slow", counting.url + "/slow?delay=3")]
    result, _ = await execute(agent_canvas(model, name, tools, timeout_s=1), MemoryOutcomes())
    error = result["nodes"]["agent"]["error"]
    assert error["type"] == "agent_limit" and "timeout_s (1 s)" in error["message"], error


def comparable(output: dict[str, Any]) -> dict[str, Any]:
    """An agent's output without what differs between two runs of it: how long its calls took
    and the counting server's running count of the requests for a path."""
    calls = [
        {**c, "duration_ms": None, "result": {**c["result"], "body": c["result"]["body"]["path"]}}
        for c in output["tool_calls"]
    ]
    return {**output, "tool_calls": calls}


async def test_a_run_executed_again_continues_after_its_last_completed_step(model: ToolModel, counting: Any) -> None:
    steps = [Call((("step", {"n": n}),)) for n in (1, 2, 3)] + [Say(("All ", "done."))]
    name = model.script("durable", *steps)
    tools = [http_tool("step", counting.url + "/durable/{{ args.n }}")]
    raw = agent_canvas(model, name, tools)
    uncrashed, _ = await execute(raw, MemoryOutcomes())
    assert uncrashed["status"] == "completed", uncrashed["error"]
    model.requests.clear()
    counting.requests.clear()

    store = MemoryOutcomes()
    model.failing_turns[(name, 3)] = 1  # the first execution fails at its third turn
    first, _ = await execute(raw, store)
    assert first["status"] == "failed"
    assert model.turns_of(name) == [1, 2, 3]
    second, events = await execute(raw, store)

    assert second["status"] == "completed", second["error"]
    assert model.turns_of(name) == [1, 2, 3, 3, 4]  # turns 1 and 2 were read back, not asked again
    paths = [r["path"] for r in counting.requests]
    assert paths == ["/durable/1", "/durable/2", "/durable/3"]  # each tool call once
    assert comparable(second["output"]) == comparable(uncrashed["output"])
    assert [e["turn"] for e in of_type(events, "agent:turn")] == [3, 4]  # only what ran again


async def test_tool_templates_compile_with_args_and_names_must_be_unique(model: ToolModel) -> None:
    registry = build_registry()
    tools = [http_tool("a", "http://x/{{ args.n }}"), http_tool("a", "http://y")]
    refused = compile_canvas(agent_canvas(model, "m", tools), registry)
    assert not refused.ok
    [issue] = [str(i) for i in refused.errors]
    assert "agent" in issue and "tool names must be unique; repeated: a" in issue, issue
    assert compile_canvas(agent_canvas(model, "m", tools[:1]), registry).ok


ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


async def test_an_answer_that_does_not_fit_output_schema_is_repaired(model: ToolModel, counting: Any) -> None:
    name = model.script(
        "schema-repair", Call((("lookup", {"n": 1}),)), Say(('{"answer": ', "1}")), Say(('{"answer": "ok"}',))
    )
    tools = [http_tool("lookup", counting.url + "/schema")]
    result, _ = await execute(agent_canvas(model, name, tools, output_schema=ANSWER_SCHEMA), MemoryOutcomes())

    assert result["status"] == "completed", result["error"]
    output = result["output"]
    assert output["json"] == {"answer": "ok"} and output["text"] == '{"answer": "ok"}' and output["turns"] == 3
    bodies = [r.body for r in model.requests if r.model == name]
    # Not strict: OpenAI's strict mode refuses a schema whose objects are not closed.
    assert bodies[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": False},
    }
    repair = bodies[2]["messages"][-1]
    assert repair["role"] == "user" and repair["content"].startswith("Your answer is not valid: ")
    assert "answer" in repair["content"] and "not of type 'string'" in repair["content"]


async def test_a_strict_output_schema_is_answered_within_it(model: ToolModel) -> None:
    closed = {**ANSWER_SCHEMA, "additionalProperties": False}
    name = model.script("schema-strict", Say(("free text",)))  # the server in strict mode writes JSON instead
    result, _ = await execute(agent_canvas(model, name, [], output_schema=closed), MemoryOutcomes())
    assert result["status"] == "completed", result["error"]
    assert result["output"]["json"] == {"answer": ""} and result["output"]["turns"] == 1
    [body] = [r.body for r in model.requests if r.model == name]
    assert body["response_format"]["json_schema"]["strict"] is True


async def test_an_answer_still_invalid_after_two_repairs_fails_output_invalid(model: ToolModel) -> None:
    name = model.script("schema-never", Say(("not json",)))
    result, _ = await execute(agent_canvas(model, name, [], output_schema=ANSWER_SCHEMA), MemoryOutcomes())
    assert result["status"] == "failed"
    error = result["nodes"]["agent"]["error"]
    assert error["type"] == "output_invalid" and "after 2 repair turns" in error["message"], error
    assert model.turns_of(name) == [1, 2, 3]


async def test_an_invalid_output_schema_does_not_compile(model: ToolModel) -> None:
    refused = compile_canvas(agent_canvas(model, "m", [], output_schema={"type": "nonsense"}), build_registry())
    assert not refused.ok
    assert "data.output_schema" in str(refused.errors[0]) and "not a valid JSON Schema" in str(refused.errors[0])


@pytest.mark.parametrize("name", ["order-support-agent.json", "lookup-order.json"])
def test_the_bundled_agent_examples_compile(name: str) -> None:
    raw = json.loads((Path(__file__).parent.parent / "examples" / name).read_text())
    result = compile_canvas(raw, build_registry())
    assert result.ok, [str(i) for i in result.errors]


def test_a_key_source_is_one_of_credential_and_api_key_secret(model: ToolModel) -> None:
    refused = compile_canvas(
        agent_canvas(model, "m", [], credential="openai", api_key_secret="OPENAI"), build_registry()
    )
    assert not refused.ok
    assert "credential" in str(refused.errors[0]) and "api_key_secret" in str(refused.errors[0])


def test_require_approval_names_tools_of_the_agent(model: ToolModel) -> None:
    raw = agent_canvas(model, "m", [http_tool("refund", "http://x")], require_approval=["refund", "wire"])
    refused = compile_canvas(raw, build_registry())
    assert not refused.ok
    assert "require_approval names tools the agent does not have: wire" in str(refused.errors[0])


async def test_memory_carries_a_conversation_across_runs_by_key_and_is_trimmed(
    model: ToolModel, handler_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'memory.db'}"
    await upgrade_schema(url)
    set_env(handler_env, FLOWMAESTRO_DATABASE_URL=url)
    name = model.script("memory", Say(("Hi ", "Alice.")), Say(("You are ", "Alice.")), Say(("Noted.",)))

    def run(key: str, prompt: str, max_tokens: int = 4000) -> dict[str, Any]:
        raw = agent_canvas(model, name, [], memory={"key": "{{ inputs.who }}", "max_tokens": max_tokens})
        raw["nodes"][1]["data"]["prompt"] = prompt
        return raw

    first, _ = await execute(run("alice", "My name is Alice."), MemoryOutcomes(), {"who": "alice"})
    assert first["status"] == "completed", first["error"]
    assert first["output"]["text"] == "Hi Alice."
    second, _ = await execute(run("alice", "Who am I?"), MemoryOutcomes(), {"who": "alice"})
    assert second["output"]["text"] == "You are Alice."
    sent = [r.body["messages"] for r in model.requests if r.model == name]
    assert sent[1] == [
        {"role": "user", "content": "My name is Alice."},
        {"role": "assistant", "content": "Hi Alice."},
        {"role": "user", "content": "Who am I?"},
    ]
    await execute(run("bob", "Who am I?"), MemoryOutcomes(), {"who": "bob"})
    assert [r.body["messages"] for r in model.requests if r.model == name][-1] == [
        {"role": "user", "content": "Who am I?"}
    ]

    engine = make_engine(url)
    memories = AgentMemories(engine)
    stored = await memories.load("", "test", "alice")
    assert [m["content"] for m in stored] == ["My name is Alice.", "Hi Alice.", "Who am I?", "You are Alice."]
    # A third run with room for about one exchange: the oldest go first, whole.
    one_exchange = tokens_of(stored[2:]) + 8
    await execute(run("alice", "Remember it.", max_tokens=one_exchange), MemoryOutcomes(), {"who": "alice"})
    stored = await memories.load("", "test", "alice")
    assert [m["content"] for m in stored] == ["Remember it.", "Noted."]
    assert tokens_of(stored) <= one_exchange
    assert trimmed(stored, 1) == []
    await engine.dispose()


def test_memory_counts_with_the_models_tokenizer_where_it_ships_else_estimates() -> None:
    conversation = [
        {"role": "user", "content": "tiktoken is great!"},
        {"role": "assistant", "content": "hello world"},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "hello world"},
    ]
    # cl100k_base (gpt-4): "tiktoken is great!" is 6 tokens, "hello world" 2, each role 1,
    # and 3 for the chat format around every message.
    assert tokens_of(conversation, "gpt-4") == (3 + 1 + 6) + 3 * (3 + 1 + 2) == 28
    assert tokens_of(conversation, "gpt-3.5-turbo-0125") == 28
    # Text that reads as a special token is counted as the text it is.
    assert tokens_of([{"role": "user", "content": "<|endoftext|>"}], "gpt-4") == 3 + 1 + 7
    # gpt-4o's tokenizer (o200k_base) does not ship, nor Anthropic's: 4 characters a token of the JSON.
    estimate = sum(-(-len(json.dumps(m)) // 4) for m in conversation)
    assert tokens_of(conversation, "gpt-4o-mini") == tokens_of(conversation, "claude-sonnet-4") == estimate == 48
    # Trimming counts the same way: the last exchange (12 tokens) fits in 20 for gpt-4, not estimated.
    assert trimmed(conversation, 20, "gpt-4") == conversation[2:]
    assert trimmed(conversation, 20, "gpt-4o-mini") == []


MCP_TOKEN = "mcp-THIS-TOKEN-MUST-NOT-LEAK-42"


async def test_mcp_tools_are_listed_allowlisted_and_called(model: ToolModel, handler_env: pytest.MonkeyPatch) -> None:
    set_env(
        handler_env,
        FLOWMAESTRO_SECRET_MCP_TOKEN=MCP_TOKEN,
        FLOWMAESTRO_SECRET_MCP_TOKEN_OWNERS="*",
        FLOWMAESTRO_SECRET_MCP_TOKEN_HOSTS="127.0.0.1",
    )
    with mcp_server() as server:
        mcp = {
            "type": "mcp",
            "url": server.url,
            "include": ["search", "refuse"],
            "auth": {"type": "bearer", "token_secret": "MCP_TOKEN"},
        }
        name = model.script(
            "mcp",
            Call((("search", {"query": "lamps"}), ("refuse", {"reason": "no"}), ("drop_tables", {}))),
            Say(("Found lamps.",)),
        )
        result, _ = await execute(agent_canvas(model, name, [mcp]), MemoryOutcomes())

    assert result["status"] == "completed", result["error"]
    search, refuse, drop = result["output"]["tool_calls"]
    assert search["result"] == {"result": "3 results for lamps"} and search["error"] is None  # structured content
    assert "refused: no" in refuse["error"]
    assert drop["error"] == "there is no tool named 'drop_tables'"  # left out of include: never offered
    assert sorted(server.calls) == [("refuse", {"reason": "no"}), ("search", {"query": "lamps"})]  # concurrent
    offered = [t["function"]["name"] for t in model.requests[-2].body["tools"]]
    assert offered == ["search", "refuse"]
    assert model.requests[-2].body["tools"][0]["function"]["parameters"]["required"] == ["query"]
    assert set(server.authorizations) == {f"Bearer {MCP_TOKEN}"}
    assert MCP_TOKEN not in json.dumps(result)


async def test_an_mcp_server_that_is_down_fails_the_node_saying_so(model: ToolModel) -> None:
    mcp = {"type": "mcp", "url": "http://127.0.0.1:9/mcp", "timeout_s": 5}
    result, _ = await execute(agent_canvas(model, "m", [mcp]), MemoryOutcomes())
    error = result["nodes"]["agent"]["error"]
    assert "cannot list the tools of the MCP server http://127.0.0.1:9/mcp" in error["message"], error
