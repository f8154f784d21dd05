"""Issue 30, findings 2, 13 and 15: secrets go only where they are bound, and hygiene.

Finding 2: an operator secret is bound to owners and hosts; the operator's default model
key goes only to the configured base URL; redaction catches the common encodings.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
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
from node_handlers.registry import build_registry
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
            return JSONResponse(
                {
                    "b64": base64.b64encode(data).decode(),
                    "b64url": base64.urlsafe_b64encode(data).decode(),
                    "b64_unpadded": base64.b64encode(data).decode().rstrip("="),
                    "basic": base64.b64encode(b"bob:" + data).decode(),
                    "embedded": base64.b64encode(b"xy" + data + b"tail").decode(),
                    "quoted": quote(sent, safe=""),
                    "quoted_plus": quote_plus(sent),
                    "hex": binascii.hexlify(data).decode(),
                    "HEX": binascii.hexlify(data).decode().upper(),
                    "plain": sent,
                }
            )

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
    return {
        "b64": base64.b64encode(data).decode(),
        "b64url": base64.urlsafe_b64encode(data).decode(),
        "quoted": quote(secret, safe=""),
        "quoted_plus": quote_plus(secret),
        "hex": binascii.hexlify(data).decode(),
        "HEX": binascii.hexlify(data).decode().upper(),
        "plain": secret,
    }


async def run_canvas(
    nodes: list[dict[str, Any]],
    owner: str | None,
    inputs: dict[str, Any] | None = None,
    declared: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """Runs the nodes, one after the other, in process as ``owner``'s run: its result and events."""
    chain = ["start", *(n["id"] for n in nodes)]
    edges = [{"id": f"e{i}", "source": a, "target": b} for i, (a, b) in enumerate(zip(chain, chain[1:]))]
    canvas = {
        "name": "attack",
        "inputs": declared or {},
        "nodes": [{"id": "start", "type": "start", "data": {}}, *nodes],
        "edges": edges,
    }
    registry = build_registry()
    compiled = compile_canvas(canvas, registry)
    assert compiled.ok, [str(i) for i in compiled.errors]
    plan = compiled.plan
    execution = Execution(
        plan, registry, run_id="run-attack", owner=owner, inputs=validate_inputs(plan.inputs, inputs or {})
    )
    events: list[Any] = []
    execution.bus.subscribe(events.append)
    return (await execution.run()).result(), events


def bearer(url: str, secret: str = "TOKEN") -> dict[str, Any]:
    return {"url": url, "auth": {"type": "bearer", "token_secret": secret}, "idempotency_key": False}


# Finding 2: bound to owners


async def test_bobs_canvas_cannot_use_alices_secret(recorder: Recorder, handler_env: pytest.MonkeyPatch) -> None:
    set_env(
        handler_env,
        FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1",
        FLOWMAESTRO_SECRET_TOKEN=TOKEN,
        FLOWMAESTRO_SECRET_TOKEN_OWNERS="alice",
        FLOWMAESTRO_SECRET_TOKEN_HOSTS="127.0.0.1",
    )
    result, _ = await run_canvas([{"id": "steal", "type": "http", "data": bearer(f"{recorder.url}/echo")}], owner="bob")
    assert result["status"] == "failed"
    error = result["nodes"]["steal"]["error"]
    assert error["type"] == "SecretNotAllowed" and "'TOKEN'" in error["message"] and "'bob'" in error["message"]
    assert recorder.requests == []  # nothing reached bob's server

    result, _ = await run_canvas([{"id": "use", "type": "http", "data": bearer(f"{recorder.url}/echo")}], owner="alice")
    assert result["status"] == "completed", result
    assert [r["headers"]["authorization"] for r in recorder.requests] == [f"Bearer {TOKEN}"]


async def test_a_secret_without_owners_is_nobodys(recorder: Recorder, handler_env: pytest.MonkeyPatch) -> None:
    set_env(
        handler_env,
        FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1",
        FLOWMAESTRO_SECRET_TOKEN=TOKEN,
        FLOWMAESTRO_SECRET_TOKEN_HOSTS="*",
    )
    for owner in ("alice", None):
        result, _ = await run_canvas(
            [{"id": "use", "type": "http", "data": bearer(f"{recorder.url}/echo")}], owner=owner
        )
        assert result["nodes"]["use"]["error"]["type"] == "SecretNotAllowed"
    assert recorder.requests == []


async def test_the_store_key_is_no_node_secret(recorder: Recorder, handler_env: pytest.MonkeyPatch) -> None:
    # FLOWMAESTRO_SECRET_KEY encrypts the store's webhook secrets: a canvas once sent it as "KEY".
    set_env(
        handler_env,
        FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1",
        FLOWMAESTRO_SECRET_KEY="fernet-key-material",
        FLOWMAESTRO_SECRET_KEY_OWNERS="*",
        FLOWMAESTRO_SECRET_KEY_HOSTS="*",
    )
    result, _ = await run_canvas(
        [{"id": "steal", "type": "http", "data": bearer(f"{recorder.url}/echo", "KEY")}], owner="bob"
    )
    assert "not a secret name" in result["nodes"]["steal"]["error"]["message"]
    assert recorder.requests == []


# Finding 2: bound to hosts


async def test_a_secret_goes_only_to_its_hosts(recorder: Recorder, handler_env: pytest.MonkeyPatch) -> None:
    port = int(recorder.url.rsplit(":", 1)[1])
    set_env(
        handler_env,
        FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1,localhost",
        FLOWMAESTRO_SECRET_TOKEN=TOKEN,
        FLOWMAESTRO_SECRET_TOKEN_OWNERS="alice",
        FLOWMAESTRO_SECRET_TOKEN_HOSTS=f"api.example.com,127.0.0.1:{port}",
    )
    result, _ = await run_canvas(
        [{"id": "elsewhere", "type": "http", "data": bearer(f"http://localhost:{port}/echo")}], owner="alice"
    )
    error = result["nodes"]["elsewhere"]["error"]
    assert error["type"] == "SecretHostDenied"
    assert "'TOKEN'" in error["message"] and f"localhost:{port}" in error["message"]
    assert recorder.requests == []


async def test_a_redirect_to_another_host_does_not_carry_the_secret(
    recorder: Recorder, handler_env: pytest.MonkeyPatch
) -> None:
    port = int(recorder.url.rsplit(":", 1)[1])
    set_env(
        handler_env,
        FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1,localhost",
        FLOWMAESTRO_SECRET_TOKEN=TOKEN,
        FLOWMAESTRO_SECRET_TOKEN_OWNERS="alice",
        FLOWMAESTRO_SECRET_TOKEN_HOSTS="127.0.0.1",
    )
    target = f"http://localhost:{port}/echo"
    result, _ = await run_canvas(
        [{"id": "hop", "type": "http", "data": bearer(f"{recorder.url}/redirect?to={quote(target, safe='')}")}],
        owner="alice",
    )
    assert result["status"] == "completed", result
    assert [r["path"] for r in recorder.requests] == ["/redirect", "/echo"]
    assert recorder.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in recorder.requests[1]["headers"]


# Finding 2: the operator's model key


LLM_CANVAS_INPUTS = {"base_url": {"type": "string"}}


async def test_the_operator_key_does_not_follow_a_templated_base_url(handler_env: pytest.MonkeyPatch) -> None:
    with FakeOpenAI().running() as attacker, FakeOpenAI().running() as configured:
        set_env(
            handler_env,
            FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1",
            OPENAI_API_KEY=OPERATOR_KEY,
            FLOWMAESTRO_OPENAI_BASE_URL=configured.base_url,
        )
        ask = {
            "id": "ask",
            "type": "llm",
            "data": {"model": "text", "prompt": "hi", "base_url": "{{ inputs.base_url }}"},
        }
        result, _ = await run_canvas(
            [ask], owner="bob", inputs={"base_url": attacker.base_url}, declared=LLM_CANVAS_INPUTS
        )
        error = result["nodes"]["ask"]["error"]
        assert error["type"] == "MissingSecret" and "api_key_secret" in error["message"]
        assert attacker.requests == []

        # The configured endpoint, templated or not, gets the key.
        result, _ = await run_canvas(
            [ask], owner="bob", inputs={"base_url": configured.base_url}, declared=LLM_CANVAS_INPUTS
        )
        assert result["status"] == "completed", result
        assert [r.headers["authorization"] for r in configured.requests] == [f"Bearer {OPERATOR_KEY}"]


async def test_another_base_url_needs_a_secret_bound_to_its_host(handler_env: pytest.MonkeyPatch) -> None:
    with FakeOpenAI().running() as own:
        port = own.base_url.split(":")[2].split("/")[0]
        set_env(
            handler_env,
            FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1",
            OPENAI_API_KEY=OPERATOR_KEY,
            FLOWMAESTRO_SECRET_BOBS_MODEL="sk-bob",
            FLOWMAESTRO_SECRET_BOBS_MODEL_OWNERS="bob",
            FLOWMAESTRO_SECRET_BOBS_MODEL_HOSTS=f"127.0.0.1:{port}",
        )
        ask = {
            "id": "ask",
            "type": "llm",
            "data": {"model": "text", "prompt": "hi", "base_url": own.base_url, "api_key_secret": "BOBS_MODEL"},
        }
        result, _ = await run_canvas([ask], owner="bob")
        assert result["status"] == "completed", result
        assert [r.headers["authorization"] for r in own.requests] == ["Bearer sk-bob"]
        result, _ = await run_canvas([ask], owner="alice")
        assert result["nodes"]["ask"]["error"]["type"] == "SecretNotAllowed"
        assert len(own.requests) == 1


# Finding 2: redaction of encodings


async def test_encoded_echoes_are_redacted_in_output_and_events(
    recorder: Recorder, handler_env: pytest.MonkeyPatch
) -> None:
    set_env(
        handler_env,
        FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1",
        FLOWMAESTRO_SECRET_TOKEN=TOKEN,
        FLOWMAESTRO_SECRET_TOKEN_OWNERS="alice",
        FLOWMAESTRO_SECRET_TOKEN_HOSTS="127.0.0.1",
    )
    result, events = await run_canvas(
        [
            {"id": "echo", "type": "http", "data": bearer(f"{recorder.url}/echo")},
            {"id": "end", "type": "end", "data": {"output": "{{ echo.body }}"}},
        ],
        owner="alice",
    )
    assert result["status"] == "completed", result
    assert recorder.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"  # it was sent
    body = result["nodes"]["echo"]["output"]["body"]
    assert set(body) >= set(the_encodings(TOKEN)) | {"basic", "embedded", "b64_unpadded"}
    assert all("[redacted]" in value for value in body.values()), body
    seen = json.dumps(result) + json.dumps([e.payload() for e in events], default=str)
    for what, form in the_encodings(TOKEN).items():
        assert form not in seen, what
    for blob in (
        base64.b64encode(b"bob:" + TOKEN.encode()).decode(),
        base64.b64encode(b"xy" + TOKEN.encode() + b"tail").decode(),
    ):
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
    config = uvicorn.Config(
        app,
        access_log=True,
        log_level="info",
        lifespan="off",
        log_config={
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "access": {
                    "()": "uvicorn.logging.AccessFormatter",
                    "use_colors": False,
                    "fmt": '%(client_addr)s - "%(request_line)s" %(status_code)s',
                }
            },
            "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "access"}},
            "loggers": {"uvicorn.access": {"handlers": ["file"], "level": "INFO", "propagate": False}},
        },
    )
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


# Finding 15: hygiene


OWNER_KEY = "owner-key-3b9d0f6c"


@contextlib.asynccontextmanager
async def local_api(tmp_path, client: tuple[str, int] = ("127.0.0.1", 50000), **overrides: Any):
    """The API on a SQLite store, no Prefect call made: (app, client as ``client``'s address)."""
    import httpx

    from api.app import create_app
    from api.settings import ApiSettings

    settings = ApiSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'api.db'}",
        home=tmp_path,
        api_keys=f"owner:{OWNER_KEY}",
        **overrides,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            yield app, http


# 15 (a)


def test_workers_and_the_prefect_server_get_no_api_keys() -> None:
    from flows.child_environment import prefect_server_environment, worker_environment

    parent = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "FLOWMAESTRO_API_KEYS": "alice:k",
        "FLOWMAESTRO_METRICS_KEY": "m",
        "FLOWMAESTRO_SECRET_KEY": "fernet",
        "FLOWMAESTRO_STREAM_TOKEN_KEY": "s",
        "FLOWMAESTRO_API_KEY": "c",
        "FLOWMAESTRO_SECRET_GITHUB": "ghp",
        "FLOWMAESTRO_SECRET_GITHUB_OWNERS": "alice",
        "OPENAI_API_KEY": "sk",
        "FLOWMAESTRO_DATABASE_URL": "sqlite://",
        "PREFECT_API_URL": "http://p",
        "AWS_SECRET_ACCESS_KEY": "a",
        "PREFECT_SERVER_API_AUTH_STRING": "u:p",
        "PREFECT_API_AUTH_STRING": "u:p",
        "GITHUB_TOKEN": "t",
    }
    worker = worker_environment(parent)
    for name in (
        "FLOWMAESTRO_API_KEYS",
        "FLOWMAESTRO_METRICS_KEY",
        "FLOWMAESTRO_SECRET_KEY",
        "FLOWMAESTRO_STREAM_TOKEN_KEY",
        "FLOWMAESTRO_API_KEY",
        "PREFECT_SERVER_API_AUTH_STRING",
    ):
        assert name not in worker, name
    for name in (
        "FLOWMAESTRO_SECRET_GITHUB",
        "OPENAI_API_KEY",
        "FLOWMAESTRO_DATABASE_URL",
        "PREFECT_API_URL",
        "PREFECT_API_AUTH_STRING",
        "PATH",
    ):  # what running nodes needs
        assert worker[name] == parent[name], name
    server = prefect_server_environment(parent)
    assert sorted(server) == [
        "HOME",
        "PATH",
        "PREFECT_API_AUTH_STRING",
        "PREFECT_API_URL",
        "PREFECT_SERVER_API_AUTH_STRING",
    ]


@pytest.mark.prefect
def test_the_workers_of_serve_do_not_see_the_api_keys(served) -> None:
    """``flowmaestro serve`` (tests/conftest.py's ``served``) has FLOWMAESTRO_API_KEYS; the
    environment of each worker process it started has not."""
    from pathlib import Path

    from tests.processes import wait_until

    def serve_pid() -> int:
        port = served.base.rsplit(":", 1)[1]
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    args = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"serve" in args and port.encode() in args:
                    return int(proc.name)
        raise AssertionError("no flowmaestro serve process")

    def children_of(pid: int) -> list[int]:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return found

    parent = serve_pid()
    assert b"FLOWMAESTRO_API_KEYS=" in Path(f"/proc/{parent}/environ").read_bytes()
    workers = wait_until(
        lambda: [c for c in children_of(parent) if b"worker" in Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")],
        timeout=120,
        what="the worker of flowmaestro serve",
    )
    for worker in workers:
        environ = Path(f"/proc/{worker}/environ").read_bytes()
        assert b"FLOWMAESTRO_SECRET_TOKEN=" in environ  # it runs nodes
        assert b"FLOWMAESTRO_API_KEYS=" not in environ and served.owner_key.encode() not in environ


# 15 (b)


async def test_the_sqlite_store_is_private(tmp_path) -> None:
    import os
    import stat

    from sqlalchemy import text

    from store.database import create_database_engine

    home = tmp_path / "home"
    engine = create_database_engine(f"sqlite+aiosqlite:///{home / 'store.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE t (x TEXT)"))
        await connection.execute(text("INSERT INTO t VALUES ('alice''s canvas')"))
        files = sorted(home.iterdir())
        assert {f.name for f in files} >= {"store.db", "store.db-wal"}
        for file in files:
            assert stat.S_IMODE(os.stat(file).st_mode) == 0o600, file
    await engine.dispose()
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700


# 15 (c)


def test_the_cli_takes_no_api_key_on_the_command_line(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import cli.triggers
    from cli.main import app

    sent: list[str] = []
    monkeypatch.setattr(cli.triggers, "call_api", lambda url, key, *args, **kwargs: sent.append(key) or [])
    monkeypatch.delenv("FLOWMAESTRO_API_KEY", raising=False)
    monkeypatch.delenv("FLOWMAESTRO_API_KEY_FILE", raising=False)
    runner = CliRunner()
    refused = runner.invoke(app, ["schedules", "list", "wf", "--api-key", OWNER_KEY])
    assert refused.exit_code == 2 and "--api-key-file" in refused.output and sent == []
    key_file = tmp_path / "key"
    key_file.write_text(OWNER_KEY + "\n")
    assert runner.invoke(app, ["schedules", "list", "wf", "--api-key-file", str(key_file)]).exit_code == 0
    assert runner.invoke(app, ["webhooks", "list", "wf"], env={"FLOWMAESTRO_API_KEY": "from-env"}).exit_code == 0
    assert sent == [OWNER_KEY, "from-env"]
    missing = runner.invoke(app, ["schedules", "list", "wf"])
    assert missing.exit_code == 2 and "FLOWMAESTRO_API_KEY" in missing.output


# 15 (d)


async def test_metrics_are_closed_by_default(tmp_path) -> None:
    async with local_api(tmp_path) as (_app, api):
        for headers in ({}, {"Authorization": f"Bearer {OWNER_KEY}"}):
            closed = await api.get("/metrics", headers=headers)
            assert closed.status_code == 403 and "FLOWMAESTRO_METRICS_PUBLIC" in closed.json()["detail"]
            assert "flowmaestro_runs" not in closed.text
    async with local_api(tmp_path, metrics_public=True) as (_app, api):
        assert "flowmaestro_runs_in_flight" in (await api.get("/metrics")).text


# 15 (e)


async def test_the_api_docs_load_nothing_from_a_cdn(tmp_path) -> None:
    import re

    async with local_api(tmp_path) as (_app, api):
        for page in ("/docs", "/redoc"):
            html = (await api.get(page)).text
            assets = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
            assert assets, html
            assert not [a for a in assets if a.startswith(("http:", "https:", "//"))], (page, assets)
            assert "cdn" not in html.lower() and "fonts.googleapis" not in html
            for asset in assets:
                answer = await api.get(asset)
                assert answer.status_code == 200 and answer.content, asset
        script = (await api.get("/docs/static/swagger-ui-bundle.js")).text
        assert "SwaggerUIBundle" in script


# 15 (f)


def test_an_approval_of_yes_is_not_true() -> None:
    from pydantic import ValidationError

    from node_handlers.approval import form_model

    form = form_model({"notify": {"type": "boolean"}})
    assert form.model_validate({"approved": True}).approved is True
    assert form.model_validate({"approved": False, "notify": True}).notify is True
    for lax in (
        {"approved": "yes"},
        {"approved": "true"},
        {"approved": 1},
        {"approved": "on"},
        {"approved": True, "notify": "yes"},
    ):
        with pytest.raises(ValidationError):
            form.model_validate(lax)


# 15 (g)


REFUSED_LIMIT = 5


async def test_unsigned_webhook_requests_are_rate_limited_per_hook_and_per_client(tmp_path) -> None:
    import uuid

    import httpx

    async with local_api(tmp_path, webhook_refused_rate_limit=REFUSED_LIMIT) as (app, api):
        saved = await app.state.runs.workflows.create("owner", "hooked", {"name": "hooked"}, "hash")
        hook = await app.state.webhooks.webhooks.create("owner", saved.workflow_id, "h", "whsec_x")
        bad = {"X-FlowMaestro-Timestamp": "1", "X-FlowMaestro-Signature": "v1=00"}

        # Per hook: from many addresses, the hook's refused budget runs out.
        codes = []
        for i in range(REFUSED_LIMIT + 2):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=(f"10.0.0.{i + 1}", 4000)), base_url="http://test"
            ) as one:
                codes.append(await one.post(f"/hooks/{hook.id}", content=b"{}", headers=bad))
        assert [a.status_code for a in codes] == [401] * REFUSED_LIMIT + [429, 429], [a.text for a in codes]
        assert 1 <= int(codes[-1].headers["retry-after"]) <= 60

        # Per client address: unknown hooks from one address.
        answers = [
            await api.post(f"/hooks/{uuid.uuid4()}", content=b"{}", headers=bad) for _ in range(REFUSED_LIMIT + 1)
        ]
        assert [a.status_code for a in answers] == [404] * REFUSED_LIMIT + [429]
        assert "retry-after" in answers[-1].headers


# Issue 22: stored credentials leave no trace


@pytest.mark.services
def test_stored_credentials_leave_no_trace_anywhere_a_run_goes(prefect_server, tmp_path) -> None:
    """A run on a real ``flowmaestro serve`` (API and worker processes, PostgreSQL store,
    Redis events, a key ring of two keys) uses two stored credentials: a bearer token for an
    http node whose server echoes it back, and an API key for llm nodes, one of which fails
    with the model server echoing the key in its error (a dead letter). Then the run's result,
    its event stream, the dead letters, every credentials answer, Prefect's flow run
    (parameters), task runs, logs and artifacts, every file the installation and the Prefect
    server wrote (API and worker logs, result storage, Prefect's database) and a pg_dump of
    the store are swept for every common encoding of both values."""
    import subprocess
    import uuid

    import httpx

    from node_handlers.redaction import secret_forms
    from tests.conftest import _SESSION_DIR
    from tests.processes import PG_HOST, PG_USER, postgres_database, stack_env, start_serve, wait_until

    token, llm_key = f"tok-{uuid.uuid4().hex}/+=", f"sk-{uuid.uuid4().hex}"
    api_key = f"key-{uuid.uuid4().hex}"
    recording = Recorder()
    home = tmp_path / "home"
    home.mkdir()
    with (
        serve_in_thread(recording.app()) as echo,
        FakeOpenAI().running() as model,
        postgres_database("fm_credsweep") as url,
    ):
        env = stack_env(
            home, prefect_server, url, api_key, FLOWMAESTRO_SECRET_KEY=f"new-{uuid.uuid4().hex},old-{uuid.uuid4().hex}"
        )
        serve, base = start_serve(home, env, workers=1)
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as api:
                seen: list[str] = []
                for body in (
                    {"name": "svc", "type": "bearer", "data": {"token": token}},
                    {"name": "model", "type": "api_key", "data": {"api_key": llm_key}},
                ):
                    created = api.post("/api/credentials", json=body)
                    assert created.status_code == 201, created.text
                    seen.append(created.text)
                llm = {"prompt": "hi", "base_url": model.base_url, "credential": "model"}
                raw = {
                    "name": "uses-credentials",
                    "nodes": [
                        {"id": "call", "type": "http", "data": {"url": f"{echo.url}/echo", "credential": "svc"}},
                        {"id": "ask", "type": "llm", "data": llm},
                        {"id": "bad", "type": "llm", "data": {**llm, "model": "unauthorized"}},
                    ],
                    "edges": [
                        {"id": "a", "source": "call", "target": "ask"},
                        {"id": "b", "source": "ask", "target": "bad"},
                    ],
                }
                saved = api.post("/api/workflows", json={"canvas": raw})
                assert saved.status_code == 201, saved.text
                started = api.post(f"/api/workflows/{saved.json()['id']}/execute", json={"inputs": {}})
                assert started.status_code == 202, started.text
                run_id = started.json()["execution_id"]
                result = wait_until(
                    lambda: (
                        (r := api.get(f"/api/executions/{run_id}")).json()["status"] in ("completed", "failed") and r
                    ),
                    timeout=120,
                    what=f"run {run_id} ending",
                )
                body = result.json()
                assert body["status"] == "failed", result.text
                assert [body["nodes"][n]["status"] for n in ("call", "ask", "bad")] == ["completed"] * 2 + ["failed"], (
                    json.dumps(body["nodes"])
                )
                # The values did go where they were meant to (the sweep below is not vacuous),
                # and both servers echoed them back.
                assert recording.requests[-1]["headers"]["authorization"] == f"Bearer {token}"
                assert [r.headers["authorization"] for r in model.requests] == [f"Bearer {llm_key}"] * 2
                assert "[redacted]" in json.dumps(body["nodes"]["call"]["output"])
                assert "[redacted]" in body["nodes"]["bad"]["error"]["message"]
                dead_letters = api.get("/api/dead-letters")
                assert [d["node_id"] for d in dead_letters.json()] == ["bad"], dead_letters.text
                seen += [
                    result.text,
                    api.get(f"/api/executions/{run_id}/stream", timeout=30).text,
                    dead_letters.text,
                    api.get("/api/credentials").text,
                    api.get("/api/executions").text,
                ]
                seen += prefect_records_of(prefect_server.api_url, result.json()["flow_run_id"])
        finally:
            serve.stop()
        database = url.rsplit("/", 1)[1]
        dump = subprocess.run(
            ["pg_dump", "-h", PG_HOST, "-U", PG_USER, database], check=True, capture_output=True
        ).stdout
        assert b"CREATE TABLE public.credentials" in dump and b"svc" in dump
    files = [p for p in [*home.rglob("*"), *(_SESSION_DIR / "server").rglob("*")] if p.is_file()]
    assert any(p.suffix == ".log" for p in files) and any("prefect.db" in p.name for p in files), files
    for what, value in {"the bearer token": token, "the llm key": llm_key}.items():
        forms = secret_forms(value)
        for i, text in enumerate(seen):
            assert not [f for f in forms if f in text], f"{what} in answer {i}: {text[:500]}"
        assert not [f for f in forms if f.encode() in dump], f"{what} in the pg_dump"
        for path in files:
            content = path.read_bytes()
            assert not [f for f in forms if f.encode() in content], f"{what} in {path}"


def prefect_records_of(api_url: str, run_id: str) -> list[str]:
    """What Prefect keeps of the run, as JSON text, once its task runs call, ask and bad and
    its summary artifact are there (as ``tests.test_secrets.prefect_records`` for its nodes)."""
    by_run = {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200}
    import httpx

    from tests.processes import wait_until

    with httpx.Client(base_url=api_url, timeout=30) as prefect:

        def tasks_recorded() -> str | None:
            text = prefect.post("/task_runs/filter", json=by_run).text
            return text if {"call", "ask", "bad"} <= {task["name"] for task in json.loads(text)} else None

        tasks_text = wait_until(tasks_recorded, timeout=60, what=f"Prefect recording the task runs of {run_id}")

        def summary_kept() -> str | None:
            text = prefect.post("/artifacts/filter", json=by_run).text
            return text if json.loads(text) else None

        found = [
            prefect.get(f"/flow_runs/{run_id}").text,
            tasks_text,
            wait_until(summary_kept, timeout=60, what=f"the summary artifact of {run_id}"),
        ]
        logs = prefect.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        assert logs.status_code == 200, logs.text
        found.append(logs.text)
        found += [prefect.get(f"/task_runs/{task['id']}").text for task in json.loads(tasks_text)]
    return found
