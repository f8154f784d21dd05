"""A local OpenAI-compatible server whose model calls tools, for the agent tests.

What it answers depends on the conversation it is sent, never on how many requests came
before: the n-th turn of a conversation (n-1 assistant messages in it) gets the n-th step
of the model's script, so a run executed again that sends the same conversation gets the
same answer. A ``response_format`` is checked and honoured as OpenAI does
(``tests.structured_mode``): refused with 400 when malformed; under ``strict``, a text
answer always fits the schema. Scripts are set by model name (``script``); every request is recorded with
its turn number. Replies stream as the OpenAI API streams them: text deltas, tool calls
split over several chunks, the usage chunk last.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.openai_server import serve_in_thread, sse
from tests.structured_mode import conforming_text, openai_format_problem, strict_schema


@dataclass(frozen=True)
class Say:
    """The model answers with text."""

    chunks: tuple[str, ...] = ("Done", ".")
    tool: str | None = None
    """Anthropic, under ``tool_choice: any``: the tool whose input the text (JSON) is."""


@dataclass(frozen=True)
class Call:
    """The model asks for tools: ``(name, arguments)`` each; ``raw`` arguments are sent as
    they are (not JSON-encoded), to test what the agent does with broken ones."""

    calls: tuple[tuple[str, Any], ...]
    text: str = ""


@dataclass(frozen=True)
class Fail:
    """The server answers this turn with an HTTP error."""

    status: int = 500


Step = Say | Call | Fail


@dataclass(frozen=True)
class Seen:
    model: str
    turn: int
    body: dict[str, Any]
    at: float


@dataclass
class ToolModel:
    scripts: dict[str, list[Step]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    failing_turns: dict[tuple[str, int], int] = field(default_factory=dict)
    """(model, turn) -> how many more times that turn fails with 500."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def script(self, model: str, *steps: Step) -> str:
        self.scripts[model] = list(steps)
        return model

    def turns_of(self, model: str) -> list[int]:
        return [r.turn for r in self.requests if r.model == model]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            model = str(body.get("model", ""))
            turn = 1 + sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
            with self.lock:
                self.requests.append(Seen(model, turn, body, time.time()))
                failing = self.failing_turns.get((model, turn), 0)
                if failing:
                    self.failing_turns[(model, turn)] = failing - 1
            script = self.scripts.get(model) or [Say()]
            step = script[min(turn, len(script)) - 1]
            if failing:
                step = Fail()
            if isinstance(step, Fail):
                return JSONResponse({"error": {"message": "scripted failure"}}, status_code=step.status)
            problem = openai_format_problem(body)
            if problem is not None:
                return JSONResponse({"error": {"message": problem, "type": "invalid_request_error"}}, status_code=400)
            if isinstance(step, Say):
                scripted = "".join(step.chunks)
                answer = conforming_text(strict_schema(body), scripted)
                step = step if answer == scripted else Say((answer,))
            return StreamingResponse(stream(step, model, turn, body), media_type="text/event-stream")

        return app


async def stream(step: Say | Call, model: str, turn: int, body: dict[str, Any]) -> AsyncIterator[bytes]:
    base = {"id": f"chatcmpl-{turn}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    written = 0
    if isinstance(step, Say):
        for text in step.chunks:
            written += 1
            yield chunk({"content": text})
        yield chunk({}, "stop")
    else:
        if step.text:
            written += 1
            yield chunk({"content": step.text})
        for index, (name, arguments) in enumerate(step.calls):
            raw = arguments["raw"] if isinstance(arguments, dict) and "raw" in arguments else json.dumps(arguments)
            half = len(raw) // 2
            call_id = f"call_{turn}_{index}"
            first = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": raw[:half]},
            }
            yield chunk({"tool_calls": [first]})
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": raw[half:]}}]})
            written += 2
        yield chunk({}, "tool_calls")
    prompt_tokens = 10 + len(json.dumps(body.get("messages", []))) // 10
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": written, "total_tokens": prompt_tokens + written}
    yield sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


@contextmanager
def tool_model() -> Iterator[ToolModel]:
    model = ToolModel()
    with serve_in_thread(model.app()) as thread:
        model.url = thread.url
        yield model


@dataclass
class ToolServer:
    """A local HTTP server for http tools: answers ``{"path": ...}`` after
    ``?delay=<s>``, and records every request (path, Idempotency-Key, when it arrived and
    when it was answered, wall clock). Its answers depend on the request only, so two runs
    that send the same requests get the same answers."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    """Paths answered 500."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def of_run(self, run_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if str(r["key"] or "").startswith(f"{run_id}:")]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def answer(path: str, request: Request) -> Response:
            record: dict[str, Any] = {
                "path": f"/{path}",
                "key": request.headers.get("idempotency-key"),
                "at": time.time(),
                "answered": None,
            }
            with self.lock:
                self.requests.append(record)
            delay = float(request.query_params.get("delay", 0))
            if delay:
                await asyncio.sleep(delay)
            record["answered"] = time.time()
            status = 500 if f"/{path}" in self.failing else 200
            return JSONResponse({"path": f"/{path}"}, status_code=status)

        return app


@contextmanager
def tool_server() -> Iterator[ToolServer]:
    server = ToolServer()
    with serve_in_thread(server.app()) as thread:
        server.url = thread.url
        yield server
