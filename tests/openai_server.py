"""A small OpenAI-compatible server for tests, and a helper to run any ASGI app on a socket.

``FakeOpenAI`` serves ``POST /v1/chat/completions`` as Server-Sent Events the way the
OpenAI API streams (``data: {chunk}`` lines, the usage chunk last, ``data: [DONE]``).
What it answers is scripted: by the model name (``PRESETS``: "text", "no-usage", "json",
"malformed-once", "error-500-once", "rate-limited-once", "unauthorized", ...), or by
replies a test queues with ``enqueue``. It records every request it receives. A
``response_format`` is checked and honoured as OpenAI does (``tests.structured_mode``):
a malformed one is refused with 400, and under ``strict`` the answer always fits the
schema, unless the reply plays a compatible server that ignores it (``ignore_schema``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.structured_mode import conforming_text, openai_format_problem, strict_schema


class ServerThread:
    """Runs an ASGI app with uvicorn in a daemon thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@contextmanager
def serve_in_thread(app: Any) -> Iterator[ServerThread]:
    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Reply:
    """One scripted answer of the fake server."""

    chunks: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    usage: bool = True
    """Send the usage chunk (when the request asks for it with stream_options)."""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error_message: str = "scripted failure"
    echo_authorization: bool = False
    """Put the request's Authorization header into the error message (as careless servers do)."""
    finish_reason: str = "stop"
    chunk_delay_s: float = 0.0
    ignore_schema: bool = False
    """Answer as scripted even under a strict response_format (a server that ignores it)."""


JSON_CHUNKS = ['{"answer": ', '42, "tags": ', '["a", ', '"b"]}']
PRESETS: dict[str, list[Reply]] = {
    "text": [Reply()],
    "no-usage": [Reply(usage=False)],
    "json": [Reply(chunks=JSON_CHUNKS)],
    "malformed-once": [Reply(chunks=['{"answer": 4', "2, oops"]), Reply(chunks=JSON_CHUNKS)],
    "error-500-once": [Reply(status=500), Reply()],
    "rate-limited-once": [Reply(status=429, headers={"Retry-After": "1"}), Reply()],
    "bad-request": [Reply(status=400, error_message="unsupported parameter")],
    "unauthorized": [Reply(status=401, echo_authorization=True)],
    "slow": [Reply(chunks=["a", "b", "c"], chunk_delay_s=1.0)],
}
"""Replies by model name: the n-th request for a model gets the n-th reply (the last repeats)."""


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    """time.monotonic() on arrival."""


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.hold: tuple[int, int] | None = None
        """``(n, m)``: the n-th request is answered once m have come (two runs made to overlap)."""
        self._queue: list[Reply] = []
        self._served: dict[str, int] = {}
        self._lock = threading.Lock()
        self.app = self._build_app()
        self._thread: ServerThread | None = None

    @property
    def base_url(self) -> str:
        assert self._thread is not None, "the server is not running"
        return f"{self._thread.url}/v1"

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, whatever the model."""
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self._served.clear()

    @contextmanager
    def running(self) -> Iterator[FakeOpenAI]:
        with serve_in_thread(self.app) as thread:
            self._thread = thread
            try:
                yield self
            finally:
                self._thread = None

    def _next_reply(self, model: str) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
            script = PRESETS.get(model, PRESETS["text"])
            served = self._served.get(model, 0)
            self._served[model] = served + 1
            return script[min(served, len(script) - 1)]

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            body = await request.json()
            with self._lock:
                self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body, time.monotonic()))
                number = len(self.requests)
            if self.hold is not None and number == self.hold[0]:
                deadline = time.monotonic() + 60  # a bound for a test gone wrong, not a wait that passes it
                while len(self.requests) < self.hold[1] and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            problem = openai_format_problem(body)
            if problem is not None:
                error = {"message": problem, "type": "invalid_request_error", "param": "response_format"}
                return JSONResponse({"error": error}, status_code=400)
            reply = self._next_reply(str(body.get("model", "")))
            if reply.status != 200:
                return error_response(reply, request.headers.get("authorization", ""))
            scripted = "".join(reply.chunks)
            answer = scripted if reply.ignore_schema else conforming_text(strict_schema(body), scripted)
            if answer != scripted:
                reply = replace(reply, chunks=[answer])
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = sse_events(reply, str(body.get("model", "")), include_usage and reply.usage, body)
            return StreamingResponse(events, media_type="text/event-stream", headers=reply.headers)

        return app


def error_response(reply: Reply, authorization: str) -> JSONResponse:
    message = reply.error_message
    if reply.echo_authorization:
        message = f"Incorrect API key provided: {authorization.removeprefix('Bearer ')}"
    return JSONResponse(
        {"error": {"message": message, "type": "scripted", "code": None}},
        status_code=reply.status,
        headers=reply.headers,
    )


async def sse_events(reply: Reply, model: str, include_usage: bool, body: dict[str, Any]) -> AsyncIterator[bytes]:
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    yield sse(first)
    for text in reply.chunks:
        if reply.chunk_delay_s:
            await asyncio.sleep(reply.chunk_delay_s)
        yield sse({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
    yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]})
    if include_usage:
        prompt_tokens = 7 + len(json.dumps(body.get("messages", []))) // 10
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(reply.chunks),
            "total_tokens": prompt_tokens + len(reply.chunks),
        }
        yield sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()
