"""Issue 30, findings 2, 13 and 15: secrets go only where they are bound, and hygiene.

Finding 2: an operator secret is bound to owners and hosts; the operator's default model
key goes only to the configured base URL; redaction catches the common encodings.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from builder.compiler import compile_canvas
from builder.inputs import validate_inputs
from flows.engine import Execution
from node_handlers.registry import default_registry
from tests.conftest_llm import handler_env, set_env  # noqa: F401
from tests.openai_server import FakeOpenAI, serve_in_thread

TOKEN = "tok-Zq8/+w7Ux3kLm2Np"  # with characters that URL and base64 encodings change
OPERATOR_KEY = "sk-operator-9f2c71d0e4b8"


class Recorder:
    """A local server that records each request's path and headers; ``/echo`` answers with the
    Authorization it got, encoded every way a careless server might; ``/redirect?to=`` redirects."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def app(self) -> Starlette:
        async def echo(request: Request) -> JSONResponse:
            self.requests.append({"path": request.url.path, "headers": dict(request.headers)})
            sent = request.headers.get("authorization", "").removeprefix("Bearer ")
            data = sent.encode()
            return JSONResponse({
                "b64": base64.b64encode(data).decode(), "b64url": base64.urlsafe_b64encode(data).decode(),
                "b64_unpadded": base64.b64encode(data).decode().rstrip("="),
                "basic": base64.b64encode(b"bob:" + data).decode(),
                "embedded": base64.b64encode(b"xy" + data + b"tail").decode(),
                "quoted": quote(sent, safe=""), "quoted_plus": quote_plus(sent),
                "hex": binascii.hexlify(data).decode(), "HEX": binascii.hexlify(data).decode().upper(),
                "plain": sent})

        async def redirect(request: Request) -> RedirectResponse:
            self.requests.append({"path": request.url.path, "headers": dict(request.headers)})
            return RedirectResponse(request.query_params["to"], status_code=307)

        return Starlette(routes=[Route("/echo", echo), Route("/redirect", redirect)])


@pytest.fixture
def recorder():
    recording = Recorder()
    with serve_in_thread(recording.app()) as server:
        recording.url = server.url  # type: ignore[attr-defined]
        yield recording


def the_encodings(secret: str) -> dict[str, str]:
    data = secret.encode()
    return {"b64": base64.b64encode(data).decode(), "b64url": base64.urlsafe_b64encode(data).decode(),
            "quoted": quote(secret, safe=""), "quoted_plus": quote_plus(secret),
            "hex": binascii.hexlify(data).decode(), "HEX": binascii.hexlify(data).decode().upper(),
            "plain": secret}


async def run_canvas(nodes: list[dict[str, Any]], owner: str | None, inputs: dict[str, Any] | None = None,
                     declared: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Runs the nodes, one after the other, in process as ``owner``'s run: its result and events."""
    chain = ["start", *(n["id"] for n in nodes)]
    edges = [{"id": f"e{i}", "source": a, "target": b} for i, (a, b) in enumerate(zip(chain, chain[1:]))]
    canvas = {"name": "attack", "inputs": declared or {}, "nodes": [{"id": "start", "type": "start", "data": {}},
                                                                    *nodes], "edges": edges}
    registry = default_registry()
    compiled = compile_canvas(canvas, registry)
    assert compiled.ok, [str(i) for i in compiled.errors]
    plan = compiled.plan
    execution = Execution(plan, registry, run_id="run-attack", owner=owner,
                          inputs=validate_inputs(plan.inputs, inputs or {}))
    events: list[Any] = []
    execution.bus.subscribe(events.append)
    return (await execution.run()).result(), events


def bearer(url: str, secret: str = "TOKEN") -> dict[str, Any]:
    return {"url": url, "auth": {"type": "bearer", "token_secret": secret}, "idempotency_key": False}


# Finding 2: bound to owners


async def test_bobs_canvas_cannot_use_alices_secret(recorder: Recorder, handler_env: pytest.MonkeyPatch) -> None:
    set_env(handler_env, FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1", FLOWMAESTRO_SECRET_TOKEN=TOKEN,
            FLOWMAESTRO_SECRET_TOKEN_OWNERS="alice", FLOWMAESTRO_SECRET_TOKEN_HOSTS="127.0.0.1")
    result, _ = await run_canvas([{"id": "steal", "type": "http", "data": bearer(f"{recorder.url}/echo")}],
                                 owner="bob")
    assert result["status"] == "failed"
    error = result["nodes"]["steal"]["error"]
    assert error["type"] == "SecretNotAllowed" and "'TOKEN'" in error["message"] and "'bob'" in error["message"]
    assert recorder.requests == []  # nothing reached bob's server

    result, _ = await run_canvas([{"id": "use", "type": "http", "data": bearer(f"{recorder.url}/echo")}],
                                 owner="alice")
    assert result["status"] == "completed", result
    assert [r["headers"]["authorization"] for r in recorder.requests] == [f"Bearer {TOKEN}"]


async def test_a_secret_without_owners_is_nobodys(recorder: Recorder, handler_env: pytest.MonkeyPatch) -> None:
    set_env(handler_env, FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1", FLOWMAESTRO_SECRET_TOKEN=TOKEN,
            FLOWMAESTRO_SECRET_TOKEN_HOSTS="*")
    for owner in ("alice", None):
        result, _ = await run_canvas([{"id": "use", "type": "http", "data": bearer(f"{recorder.url}/echo")}],
                                     owner=owner)
        assert result["nodes"]["use"]["error"]["type"] == "SecretNotAllowed"
    assert recorder.requests == []


async def test_the_store_key_is_no_node_secret(recorder: Recorder, handler_env: pytest.MonkeyPatch) -> None:
    # FLOWMAESTRO_SECRET_KEY encrypts the store's webhook secrets: a canvas once sent it as "KEY".
    set_env(handler_env, FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1", FLOWMAESTRO_SECRET_KEY="fernet-key-material",
            FLOWMAESTRO_SECRET_KEY_OWNERS="*", FLOWMAESTRO_SECRET_KEY_HOSTS="*")
    result, _ = await run_canvas([{"id": "steal", "type": "http", "data": bearer(f"{recorder.url}/echo", "KEY")}],
                                 owner="bob")
    assert "not a secret name" in result["nodes"]["steal"]["error"]["message"]
    assert recorder.requests == []


# Finding 2: bound to hosts


async def test_a_secret_goes_only_to_its_hosts(recorder: Recorder, handler_env: pytest.MonkeyPatch) -> None:
    port = int(recorder.url.rsplit(":", 1)[1])
    set_env(handler_env, FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1,localhost", FLOWMAESTRO_SECRET_TOKEN=TOKEN,
            FLOWMAESTRO_SECRET_TOKEN_OWNERS="alice", FLOWMAESTRO_SECRET_TOKEN_HOSTS=f"api.example.com,127.0.0.1:{port}")
    result, _ = await run_canvas([{"id": "elsewhere", "type": "http",
                                   "data": bearer(f"http://localhost:{port}/echo")}], owner="alice")
    error = result["nodes"]["elsewhere"]["error"]
    assert error["type"] == "SecretHostDenied"
    assert "'TOKEN'" in error["message"] and f"localhost:{port}" in error["message"]
    assert recorder.requests == []


async def test_a_redirect_to_another_host_does_not_carry_the_secret(recorder: Recorder,
                                                                     handler_env: pytest.MonkeyPatch) -> None:
    port = int(recorder.url.rsplit(":", 1)[1])
    set_env(handler_env, FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1,localhost", FLOWMAESTRO_SECRET_TOKEN=TOKEN,
            FLOWMAESTRO_SECRET_TOKEN_OWNERS="alice", FLOWMAESTRO_SECRET_TOKEN_HOSTS="127.0.0.1")
    target = f"http://localhost:{port}/echo"
    result, _ = await run_canvas([{"id": "hop", "type": "http",
                                   "data": bearer(f"{recorder.url}/redirect?to={quote(target, safe='')}")}],
                                 owner="alice")
    assert result["status"] == "completed", result
    assert [r["path"] for r in recorder.requests] == ["/redirect", "/echo"]
    assert recorder.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in recorder.requests[1]["headers"]


# Finding 2: the operator's model key


LLM_CANVAS_INPUTS = {"base_url": {"type": "string"}}


async def test_the_operator_key_does_not_follow_a_templated_base_url(handler_env: pytest.MonkeyPatch) -> None:
    with FakeOpenAI().running() as attacker, FakeOpenAI().running() as configured:
        set_env(handler_env, FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1", OPENAI_API_KEY=OPERATOR_KEY,
                FLOWMAESTRO_OPENAI_BASE_URL=configured.base_url)
        ask = {"id": "ask", "type": "llm", "data": {"model": "text", "prompt": "hi",
                                                     "base_url": "{{ inputs.base_url }}"}}
        result, _ = await run_canvas([ask], owner="bob", inputs={"base_url": attacker.base_url},
                                     declared=LLM_CANVAS_INPUTS)
        error = result["nodes"]["ask"]["error"]
        assert error["type"] == "MissingSecret" and "api_key_secret" in error["message"]
        assert attacker.requests == []

        # The configured endpoint, templated or not, gets the key.
        result, _ = await run_canvas([ask], owner="bob", inputs={"base_url": configured.base_url},
                                     declared=LLM_CANVAS_INPUTS)
        assert result["status"] == "completed", result
        assert [r.headers["authorization"] for r in configured.requests] == [f"Bearer {OPERATOR_KEY}"]


async def test_another_base_url_needs_a_secret_bound_to_its_host(handler_env: pytest.MonkeyPatch) -> None:
    with FakeOpenAI().running() as own:
        port = own.base_url.split(":")[2].split("/")[0]
        set_env(handler_env, FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1", OPENAI_API_KEY=OPERATOR_KEY,
                FLOWMAESTRO_SECRET_BOBS_MODEL="sk-bob", FLOWMAESTRO_SECRET_BOBS_MODEL_OWNERS="bob",
                FLOWMAESTRO_SECRET_BOBS_MODEL_HOSTS=f"127.0.0.1:{port}")
        ask = {"id": "ask", "type": "llm", "data": {"model": "text", "prompt": "hi", "base_url": own.base_url,
                                                     "api_key_secret": "BOBS_MODEL"}}
        result, _ = await run_canvas([ask], owner="bob")
        assert result["status"] == "completed", result
        assert [r.headers["authorization"] for r in own.requests] == ["Bearer sk-bob"]
        result, _ = await run_canvas([ask], owner="alice")
        assert result["nodes"]["ask"]["error"]["type"] == "SecretNotAllowed"
        assert len(own.requests) == 1


# Finding 2: redaction of encodings


async def test_encoded_echoes_are_redacted_in_output_and_events(recorder: Recorder,
                                                                handler_env: pytest.MonkeyPatch) -> None:
    set_env(handler_env, FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1", FLOWMAESTRO_SECRET_TOKEN=TOKEN,
            FLOWMAESTRO_SECRET_TOKEN_OWNERS="alice", FLOWMAESTRO_SECRET_TOKEN_HOSTS="127.0.0.1")
    result, events = await run_canvas([{"id": "echo", "type": "http", "data": bearer(f"{recorder.url}/echo")},
                                       {"id": "end", "type": "end", "data": {"output": "{{ echo.body }}"}}],
                                      owner="alice")
    assert result["status"] == "completed", result
    assert recorder.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"  # it was sent
    body = result["nodes"]["echo"]["output"]["body"]
    assert set(body) >= set(the_encodings(TOKEN)) | {"basic", "embedded", "b64_unpadded"}
    assert all("[redacted]" in value for value in body.values()), body
    seen = json.dumps(result) + json.dumps([e.payload() for e in events], default=str)
    for what, form in the_encodings(TOKEN).items():
        assert form not in seen, what
    for blob in (base64.b64encode(b"bob:" + TOKEN.encode()).decode(),
                 base64.b64encode(b"xy" + TOKEN.encode() + b"tail").decode()):
        assert blob[4:-4] not in seen


# Finding 13: the stream token in uvicorn's access log


STREAM_TOKEN = "st-4f1c9e0b7a2d5e8f"


def test_the_stream_token_is_redacted_from_a_real_access_log(tmp_path) -> None:
    """A real uvicorn writes its access log (through the filter ``create_app`` installs) to a
    file; every spelling of the token parameter a client may use is redacted there."""
    import logging
    import socket
    import threading
    import time

    import httpx
    import uvicorn
    from fastapi import FastAPI

    from api.stream_tokens import redact_access_logs

    app = FastAPI()

    @app.get("/{path:path}")
    def anything(path: str) -> dict[str, str]:
        return {"path": path}

    log_file = tmp_path / "access.log"
    config = uvicorn.Config(app, access_log=True, log_level="info", lifespan="off", log_config={
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"access": {"()": "uvicorn.logging.AccessFormatter", "use_colors": False,
                                  "fmt": '%(client_addr)s - "%(request_line)s" %(status_code)s'}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "access"}},
        "loggers": {"uvicorn.access": {"handlers": ["file"], "level": "INFO", "propagate": False}}})
    redact_access_logs()  # as create_app does
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    spellings = ["token", "%74oken", "TOKEN", "Token", "%54%4F%4B%45%4E", "to%6Ben"]
    paths = [f"/api/executions/x/stream?after=3&{name}={STREAM_TOKEN}" for name in spellings]
    paths += [f"/api/executions/x/stream;token={STREAM_TOKEN}", f"/api/executions/x/stream?a=1;ToKeN={STREAM_TOKEN}"]
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        with httpx.Client(base_url=base, timeout=30) as client:
            for path in paths:
                assert client.get(path).status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        for handler in logging.getLogger("uvicorn.access").handlers:
            handler.flush()
    lines = log_file.read_text().splitlines()
    assert len(lines) == len(paths), lines  # every request was logged
    assert all("[redacted]" in line for line in lines), lines
    assert STREAM_TOKEN not in log_file.read_text()
