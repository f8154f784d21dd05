"""A local server speaking the Anthropic Messages protocol (``POST /v1/messages``), streamed
(``stream: true``: the named SSE events ``message_start``, ``content_block_*``,
``message_delta``, ``message_stop``) and not (one JSON message), for the agent and llm tests.

Scripted as ``tests.agent_server.ToolModel`` is: the n-th turn of a conversation (n-1
assistant messages in it) gets the n-th step of the model's script (``Say``, ``Call``,
``Fail``). Every request is recorded with its headers (``x-api-key``). Tools, ``tool_choice``
and the pairing of ``tool_use`` with ``tool_result`` are checked as the API checks them
(``tests.structured_mode``: 400 otherwise). Under a forced tool (``tool_choice`` ``tool``, or
``any`` with ``Say(tool=...)``), a ``Say`` step is the model calling that tool with the
step's text as its input (JSON; an object of the tool's schema when the text is none).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.agent_server import Call, Fail, Say, Step
from tests.openai_server import serve_in_thread
from tests.structured_mode import anthropic_request_problem, instance_of


@dataclass(frozen=True)
class SeenMessage:
    model: str
    turn: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class AnthropicModel:
    scripts: dict[str, list[Step]] = field(default_factory=dict)
    requests: list[SeenMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def script(self, model: str, *steps: Step) -> str:
        self.scripts[model] = list(steps)
        return model

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/messages")
        async def messages(request: Request) -> Response:
            body = await request.json()
            model = str(body.get("model", ""))
            turn = 1 + sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
            with self.lock:
                self.requests.append(SeenMessage(model, turn, body, dict(request.headers)))
            script = self.scripts.get(model) or [Say()]
            step = script[min(turn, len(script)) - 1]
            if isinstance(step, Fail):
                error = {"type": "error", "error": {"type": "api_error", "message": "scripted failure"}}
                return JSONResponse(error, status_code=step.status)
            problem = anthropic_request_problem(body)
            if problem is not None:
                error = {"type": "error", "error": {"type": "invalid_request_error", "message": problem}}
                return JSONResponse(error, status_code=400)
            if isinstance(step, Say):
                forced = forced_call(step, body)
                if isinstance(forced, str):
                    error = {"type": "error", "error": {"type": "api_error", "message": forced}}
                    return JSONResponse(error, status_code=500)
                step = forced or step
            blocks = content_blocks(step, turn)
            usage = {"input_tokens": 10 + len(json.dumps(body.get("messages", []))) // 10, "output_tokens": 0}
            usage["output_tokens"] = sum(len(b["text"]) if b["type"] == "text" else 3 for b in blocks)
            stop = "tool_use" if isinstance(step, Call) else "end_turn"
            if body.get("stream"):
                return StreamingResponse(events(step, blocks, model, usage, stop), media_type="text/event-stream")
            message = {
                "id": f"msg_{turn}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
            return JSONResponse(message)

        return app


def forced_call(step: Say, body: dict[str, Any]) -> Call | str | None:
    """The tool call a forced ``tool_choice`` makes of a ``Say`` step; a str: a script error."""
    choice = body.get("tool_choice") or {}
    if choice.get("type") not in ("tool", "any"):
        return None
    name = choice.get("name") if choice["type"] == "tool" else step.tool
    if name is None:
        return "test script: under tool_choice any the model calls a tool; give Say(tool=...)"
    tool = next((t for t in body.get("tools", []) if t["name"] == name), None)
    if tool is None:
        return f"test script: no tool {name} in the request"
    try:
        arguments = json.loads("".join(step.chunks))
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        arguments = instance_of(tool["input_schema"], tool["input_schema"])
    return Call(((name, arguments),))


def content_blocks(step: Say | Call, turn: int) -> list[dict[str, Any]]:
    if isinstance(step, Say):
        return [{"type": "text", "text": "".join(step.chunks)}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": step.text}] if step.text else []
    for index, (name, arguments) in enumerate(step.calls):
        blocks.append({"type": "tool_use", "id": f"toolu_{turn}_{index}", "name": name, "input": arguments})
    return blocks


async def events(
    step: Say | Call, blocks: list[dict[str, Any]], model: str, usage: dict[str, int], stop: str
) -> AsyncIterator[bytes]:
    start = {
        "id": "msg_stream",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
    }
    yield event("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            yield event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            pieces = list(step.chunks) if isinstance(step, Say) else [block["text"]]
            for piece in pieces:
                delta = {"type": "text_delta", "text": piece}
                yield event("content_block_delta", {"index": index, "delta": delta})
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            yield event("content_block_start", {"index": index, "content_block": opening})
            raw = json.dumps(block["input"])
            for piece in (raw[: len(raw) // 2], raw[len(raw) // 2 :]):
                yield event(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}},
                )
        yield event("content_block_stop", {"index": index})
    delta = {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": usage["output_tokens"]}}
    yield event("message_delta", delta)
    yield event("message_stop", {})


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


@contextmanager
def anthropic_model() -> Iterator[AnthropicModel]:
    model = AnthropicModel()
    with serve_in_thread(model.app()) as thread:
        model.url = thread.url
        yield model
