"""Stored credentials used by runs on a real worker (in this process) with the API, on a
PostgreSQL store and the session's Prefect server: http and llm nodes send the run owner's
values, a rotation reaches the next execution, owners are isolated, a workflow naming a
credential its owner lacks is refused (execute: 422; a webhook's run: fails at once; save:
a warning), and a credential deleted while a run waits fails the node that needed it."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.app import create_app
from api.settings import ApiSettings
from api.signing import sign
from tests.openai_server import FakeOpenAI, serve_in_thread
from tests.support import canvas, eventually, node, save, wait_execution
from tests.support import wait_final as _wait_final

wait_final = partial(_wait_final, timeout=120)

pytestmark = pytest.mark.prefect

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET_KEY = "credentials-runs-" + uuid.uuid4().hex


class Recorder:
    """A local server recording the Authorization of each request; ``/echo`` answers it back."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []

    def app(self) -> Starlette:
        async def echo(request: Request) -> JSONResponse:
            self.authorizations.append(request.headers.get("authorization", ""))
            return JSONResponse({"you_sent": request.headers.get("authorization", "")})

        return Starlette(routes=[Route("/echo", echo)])


@pytest.fixture(scope="module")
def recorder():
    recording = Recorder()
    with serve_in_thread(recording.app()) as server:
        recording.url = server.url  # type: ignore[attr-defined]
        yield recording


@pytest.fixture(scope="module")
def fake_openai():
    with FakeOpenAI().running() as server:
        yield server


@pytest.fixture(scope="module")
async def stack(prefect_server, in_process_workers):
    from store.db import upgrade_schema

    name = f"fm_credruns_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    pool = f"credruns-{uuid.uuid4().hex[:6]}"
    await upgrade_schema(url)
    with pytest.MonkeyPatch.context() as env:
        # The worker opens credentials with the API's key ring, and may call local servers.
        env.setenv("FLOWMAESTRO_SECRET_KEY", SECRET_KEY)
        env.setenv("FLOWMAESTRO_HTTP_ALLOW_HOSTS", "127.0.0.1")
        await in_process_workers.start(url, pool)
        yield url, pool
        await in_process_workers.stop_all()  # before its database goes
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
def make_api(stack, tmp_path):
    url, pool = stack

    @asynccontextmanager
    async def make():
        alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
        settings = ApiSettings(
            database_url=url,
            api_keys=f"{alice}:key-{alice},{bob}:key-{bob}",
            home=tmp_path,
            work_pool=pool,
            secret_key=SECRET_KEY,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
                headers={"Authorization": f"Bearer key-{alice}"},
                timeout=60,
            ) as client:
                client.bob = {"Authorization": f"Bearer key-{bob}"}  # type: ignore[attr-defined]
                yield client

    return make


async def store(api, name: str, kind: str, data: dict[str, str], headers: dict[str, str] | None = None) -> str:
    created = await api.post("/api/credentials", json={"name": name, "type": kind, "data": data}, headers=headers)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def http_node(node_id: str, url: str, credential: str) -> dict[str, Any]:
    return node(node_id, "http", data={"url": f"{url}/echo", "credential": credential, "idempotency_key": False})


async def run(api, workflow_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    started = await api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {}}, headers=headers)
    assert started.status_code == 202, started.text
    execution_id = started.json()["execution_id"]
    if headers is None:
        return await wait_final(api, execution_id)
    return await _wait_final(_Client(api, headers), execution_id, timeout=120)


class _Client:
    """``api`` reading as another owner (``wait_final`` takes a client)."""

    def __init__(self, api: httpx.AsyncClient, headers: dict[str, str]):
        self.api, self.headers = api, headers

    async def get(self, path: str) -> httpx.Response:
        return await self.api.get(path, headers=self.headers)


async def test_http_and_llm_send_the_owners_values_and_a_rotation_reaches_the_next_execution(
    make_api, recorder, fake_openai
):
    token, token2, llm_key = (f"{kind}-{uuid.uuid4().hex}" for kind in ("tok", "tok2", "sk"))
    async with make_api() as api:
        svc = await store(api, "svc", "bearer", {"token": token})
        await store(api, "model", "api_key", {"api_key": llm_key})
        raw = canvas(
            [
                http_node("call", recorder.url, "svc"),
                node("ask", "llm", data={"prompt": "hi", "base_url": fake_openai.base_url, "credential": "model"}),
            ],
            [("call", "ask")],
        )
        saved = await save(api, raw)
        assert not [w for w in saved["warnings"] if w["code"] == "missing_credential"]
        before = len(recorder.authorizations)
        first = await run(api, saved["id"])
        assert first["status"] == "completed", first
        assert recorder.authorizations[before:] == [f"Bearer {token}"]
        assert fake_openai.requests[-1].headers["authorization"] == f"Bearer {llm_key}"
        # The server echoed the token: the node's output has it redacted.
        assert token not in json.dumps(first) and "[redacted]" in json.dumps(first["nodes"]["call"])

        rotated = await api.put(f"/api/credentials/{svc}", json={"data": {"token": token2}})
        assert rotated.status_code == 200
        second = await run(api, saved["id"])
        assert second["status"] == "completed", second
        assert recorder.authorizations[before:] == [f"Bearer {token}", f"Bearer {token2}"]
        used = (await api.get(f"/api/credentials/{svc}")).json()
        assert used["last_used_at"] is not None


async def test_owners_are_isolated(make_api, recorder):
    alices, bobs = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    async with make_api() as api:
        await store(api, "svc", "bearer", {"token": alices})
        await store(api, "only-alice", "bearer", {"token": alices})
        await store(api, "svc", "bearer", {"token": bobs}, headers=api.bob)
        raw = canvas([http_node("call", recorder.url, "svc")], name="bob's")
        saved = (await api.post("/api/workflows", json={"canvas": raw}, headers=api.bob)).json()
        before = len(recorder.authorizations)
        result = await run(api, saved["id"], headers=api.bob)
        assert result["status"] == "completed", result
        assert recorder.authorizations[before:] == [f"Bearer {bobs}"]  # bob's own, never alice's

        # Bob naming alice's other credential: a warning at save, 422 at execute.
        raw = canvas([http_node("steal", recorder.url, "only-alice")], name="bob steals")
        answer = await api.post("/api/workflows", json={"canvas": raw}, headers=api.bob)
        assert answer.status_code == 201
        [warning] = [w for w in answer.json()["warnings"] if w["code"] == "missing_credential"]
        assert warning["node_id"] == "steal" and "'only-alice'" in warning["message"]
        refused = await api.post(f"/api/workflows/{answer.json()['id']}/execute", json={"inputs": {}}, headers=api.bob)
        assert refused.status_code == 422, refused.text
        [issue] = refused.json()["issues"]
        assert issue["node_id"] == "steal" and "'only-alice'" in issue["message"]
        assert "'steal'" in refused.json()["detail"]
        assert recorder.authorizations[before + 1 :] == []


async def test_a_webhook_run_naming_a_missing_credential_fails_at_once_saying_which(make_api, recorder):
    async with make_api() as api:
        raw = canvas([node("first"), http_node("call", recorder.url, "absent")], [("first", "call")])
        saved = await save(api, raw)
        hook = (await api.post(f"/api/workflows/{saved['id']}/webhooks", json={"name": "ci"})).json()
        body, timestamp = b"{}", int(time.time())
        delivered = await api.post(
            hook["url"],
            content=body,
            headers={
                "Authorization": "",
                "X-FlowMaestro-Timestamp": str(timestamp),
                "X-FlowMaestro-Signature": sign(hook["secret"], timestamp, body),
                "content-type": "application/json",
            },
        )
        assert delivered.status_code == 202, delivered.text
        before = len(recorder.authorizations)
        result = await wait_final(api, delivered.json()["execution_id"])
        assert result["status"] == "failed"
        assert "'absent'" in result["error"]["message"] and "'call'" in result["error"]["message"]
        assert result["error"]["type"] == "missing_credentials"
        assert not [n for n, v in (result.get("nodes") or {}).items() if v.get("status") == "completed"]
        assert recorder.authorizations[before:] == []


async def test_a_credential_deleted_while_the_run_waits_fails_the_node_saying_so(make_api, recorder):
    async with make_api() as api:
        temp = await store(api, "temp", "bearer", {"token": "t-" + uuid.uuid4().hex})
        raw = canvas(
            [node("ask", "approval", data={"message": "go?"}), http_node("call", recorder.url, "temp")],
            [("ask", "call", "approved")],
        )
        saved = await save(api, raw)
        started = await api.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}})
        assert started.status_code == 202, started.text
        execution_id = started.json()["execution_id"]
        await wait_execution(
            api,
            execution_id,
            lambda body: (body.get("nodes") or {}).get("ask", {}).get("status") == "paused",
            timeout=120,
            what="the approval waiting",
        )
        assert (await api.delete(f"/api/credentials/{temp}")).status_code == 204

        async def resumed() -> bool:
            answer = await api.post(
                f"/api/executions/{execution_id}/resume", json={"node_id": "ask", "input": {"approved": True}}
            )
            return answer.status_code == 200

        await eventually(resumed, timeout=60, what="the approval accepting the answer")
        result = await wait_final(api, execution_id)
        assert result["status"] == "failed", result
        error = result["nodes"]["call"]["error"]
        assert error["type"] == "MissingCredential"
        assert "'temp'" in error["message"] and "deleted" in error["message"]
