"""Webhooks through the API on PostgreSQL, with the session's real Prefect server and a
worker in this process: signed deliveries start runs of the workflow's deployment."""

from __future__ import annotations

import json
import stat
import time
import uuid
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import asyncpg
import httpx
import pytest

from api.app import create_app
from api.rate_limit import MemoryRateLimiter, RedisRateLimiter
from api.settings import ApiSettings
from api.signing import sign
from store.secrets import KEY_FILE, SecretBox
from tests.support import canvas, node
from tests.support import wait_final as _wait_final

wait_final = partial(_wait_final, timeout=90)

pytestmark = pytest.mark.prefect

KEY = "hook-key"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
async def stack(prefect_server, in_process_workers):
    from store.db import upgrade_schema

    name = f"fm_hooks_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    pool = f"hooks-{uuid.uuid4().hex[:6]}"
    await upgrade_schema(url)
    await in_process_workers.start(url, pool)
    yield url, pool, name
    await in_process_workers.stop_all()  # before its database goes
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
def make_api(stack, tmp_path, test_handlers):
    url, pool, _name = stack

    @asynccontextmanager
    async def make(**overrides: Any):
        alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
        settings = ApiSettings(
            database_url=url,
            api_keys=f"{alice}:{KEY}-{alice},{bob}:{KEY}-{bob}",
            home=tmp_path,
            work_pool=pool,
            **overrides,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
                headers={"Authorization": f"Bearer {KEY}-{alice}"},
            ) as client:
                client.bob = {"Authorization": f"Bearer {KEY}-{bob}"}
                yield client

    return make


@pytest.fixture
async def api(make_api):
    async with make_api() as client:
        yield client


def hello() -> dict[str, Any]:
    return canvas(
        [
            node("start", "start"),
            node("greet", data={"output": "Hello {{ inputs.who }}"}),
            node("end", "end", data={"output": "{{ greet }}"}),
        ],
        [("start", "greet"), ("greet", "end")],
        name=f"hook-{uuid.uuid4().hex[:6]}",
        inputs={"who": {"type": "string", "required": True}},
    )


async def workflow_with_hook(api) -> tuple[str, dict[str, Any]]:
    workflow_id = (await api.post("/api/workflows", json={"canvas": hello()})).json()["id"]
    created = await api.post(f"/api/workflows/{workflow_id}/webhooks", json={"name": "ci"})
    assert created.status_code == 201, created.text
    return workflow_id, created.json()


def signed(secret: str, body: bytes, timestamp: int | None = None, **more: str) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "X-FlowMaestro-Timestamp": str(timestamp),
        "X-FlowMaestro-Signature": sign(secret, timestamp, body),
        "content-type": "application/json",
        **more,
    }


async def deliver(
    api,
    hook: dict[str, Any],
    inputs: Any,
    params: dict[str, Any] | None = None,
    timestamp: int | None = None,
    **headers: str,
) -> httpx.Response:
    body = json.dumps(inputs).encode()
    # No bearer key: the signature is the credential.
    return await api.post(
        hook["url"],
        content=body,
        params=params,
        headers={"Authorization": "", **signed(hook["secret"], body, timestamp), **headers},
    )


async def executions(api, workflow_id: str) -> list[dict[str, Any]]:
    return (await api.get("/api/executions", params={"workflow_id": workflow_id})).json()


async def test_a_signed_request_starts_a_run_of_the_latest_version_recorded_as_a_webhook_run(api):
    workflow_id, hook = await workflow_with_hook(api)
    assert hook["url"] == f"/hooks/{hook['id']}" and hook["secret"].startswith("whsec_")
    answer = await deliver(api, hook, {"who": "Hook"})
    assert answer.status_code == 202, answer.text
    execution_id = answer.json()["execution_id"]
    assert answer.json() == {"execution_id": execution_id}
    result = await wait_final(api, execution_id)
    assert result["output"] == "Hello Hook"
    listed = (await api.get("/api/executions", params={"trigger": "webhook", "workflow_id": workflow_id})).json()
    assert [(e["id"], e["trigger"]) for e in listed] == [(execution_id, {"type": "webhook", "webhook_id": hook["id"]})]
    assert (await api.get("/api/executions", params={"trigger": "schedule", "workflow_id": workflow_id})).json() == []


async def test_missing_wrong_and_stale_signatures_are_401_and_start_nothing(api):
    workflow_id, hook = await workflow_with_hook(api)
    body = json.dumps({"who": "x"}).encode()
    now = int(time.time())
    refused = {
        "no headers": {"content-type": "application/json"},
        "no signature": {"X-FlowMaestro-Timestamp": str(now)},
        "no timestamp": {"X-FlowMaestro-Signature": sign(hook["secret"], now, body)},
        "wrong secret": signed("whsec_not-the-secret", body),
        "other body": {**signed(hook["secret"], b'{"who": "y"}')},
        "timestamp not signed": {**signed(hook["secret"], body), "X-FlowMaestro-Timestamp": str(now - 1)},
        "stale": signed(hook["secret"], body, timestamp=now - 301),
        "future": signed(hook["secret"], body, timestamp=now + 301),
        "not a number": {**signed(hook["secret"], body), "X-FlowMaestro-Timestamp": "yesterday"},
        "bare hex": {
            **signed(hook["secret"], body),
            "X-FlowMaestro-Signature": sign(hook["secret"], now, body).removeprefix("sha256="),
        },
    }
    for why, headers in refused.items():
        answer = await api.post(hook["url"], content=body, headers={"Authorization": "", **headers})
        assert answer.status_code == 401, (why, answer.text)
        assert answer.json()["detail"].startswith("invalid webhook signature"), why
    assert await executions(api, workflow_id) == []
    # Just inside the tolerance is fine.
    inside = await api.post(hook["url"], content=body, headers=signed(hook["secret"], body, timestamp=now - 290))
    assert inside.status_code == 202, inside.text
    # A rotated secret: the old one stops working at once, the new one works.
    rotated = (await api.post(f"/api/workflows/{workflow_id}/webhooks/{hook['id']}/rotate")).json()
    assert rotated["id"] == hook["id"] and rotated["secret"] != hook["secret"]
    assert (await deliver(api, hook, {"who": "x"})).status_code == 401
    assert (await deliver(api, {**hook, "secret": rotated["secret"]}, {"who": "x"})).status_code == 202
    assert len(await executions(api, workflow_id)) == 2


async def test_the_same_idempotency_key_starts_one_run(api):
    workflow_id, hook = await workflow_with_hook(api)
    key = f"delivery-{uuid.uuid4().hex}"
    now = int(time.time())
    first = await deliver(api, hook, {"who": "Once"}, timestamp=now, **{"Idempotency-Key": key})
    again = await deliver(api, hook, {"who": "Once"}, timestamp=now, **{"Idempotency-Key": key})
    # Another request (its own timestamp: the same signed request again would be a replay,
    # whatever its Idempotency-Key) with another key starts another run. Its timestamp is
    # set apart from the first's explicitly: "the clock minus a second" was the first's
    # own second whenever a second ticked between the two requests (a replay, 409).
    other = await deliver(api, hook, {"who": "Once"}, timestamp=now - 1, **{"Idempotency-Key": key + "-2"})
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 202)
    assert first.json()["execution_id"] == again.json()["execution_id"] != other.json()["execution_id"]
    # The key is the hook's: another hook of the same workflow may use it too.
    second_hook = (await api.post(f"/api/workflows/{workflow_id}/webhooks", json={"name": "other"})).json()
    elsewhere = await deliver(api, second_hook, {"who": "Once"}, **{"Idempotency-Key": key})
    assert elsewhere.status_code == 202 and elsewhere.json()["execution_id"] != first.json()["execution_id"]
    assert len(await executions(api, workflow_id)) == 3


async def test_bodies_over_one_mib_are_413(make_api):
    async with make_api(max_request_bytes=4_000_000) as api:  # the webhook limit is the smaller one
        workflow_id, hook = await workflow_with_hook(api)
        big = json.dumps({"who": "x" * (1_048_576 - 10)}).encode()
        assert len(big) > 1_048_576
        answer = await api.post(hook["url"], content=big, headers=signed(hook["secret"], big))
        assert answer.status_code == 413 and answer.json()["detail"] == "request body larger than 1048576 bytes"

        async def chunks():  # no Content-Length: refused while it is read
            yield big[:600_000]
            yield big[600_000:]

        chunked = await api.post(hook["url"], content=chunks(), headers=signed(hook["secret"], big))
        assert chunked.status_code == 413
        # The other routes keep the general limit.
        large = await api.post("/api/workflows/validate", json={"canvas": {"name": "x" * 1_500_000}})
        assert large.status_code == 200
        assert await executions(api, workflow_id) == []


async def test_inputs_that_do_not_fit_are_422_naming_the_input(api):
    workflow_id, hook = await workflow_with_hook(api)
    missing = await deliver(api, hook, {})
    assert missing.status_code == 422 and missing.json()["issues"][0]["field"] == "inputs.who", missing.text
    wrong = await deliver(api, hook, {"who": 5})
    assert wrong.status_code == 422 and wrong.json()["issues"][0]["field"] == "inputs.who"
    not_an_object = await deliver(api, hook, ["who"])
    assert not_an_object.status_code == 422 and not_an_object.json()["issues"][0]["field"] == "body"
    raw = b"{not json"
    broken = await api.post(hook["url"], content=raw, headers=signed(hook["secret"], raw))
    assert broken.status_code == 422 and broken.json()["issues"][0]["field"] == "body"
    assert await executions(api, workflow_id) == []


async def test_over_the_rate_limit_is_429_with_retry_after(make_api):
    async with make_api(webhook_rate_limit=3) as api:
        workflow_id, hook = await workflow_with_hook(api)
        answers = [await deliver(api, hook, {"who": str(i)}) for i in range(5)]
        codes = [a.status_code for a in answers]
        # A sliding window: the three in any 60 s are allowed, the rest refused.
        assert codes == [202, 202, 202, 429, 429], codes
        limited = next(a for a in answers if a.status_code == 429)
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert len(await executions(api, workflow_id)) == codes.count(202)
        # Unsigned requests are refused before they are counted.
        other_workflow, other = await workflow_with_hook(api)
        for _ in range(5):
            assert (await api.post(other["url"], json={"who": "x"})).status_code == 401
        assert (await deliver(api, other, {"who": "x"})).status_code == 202


async def test_rate_limits_count_in_redis_across_processes():
    url = "redis://127.0.0.1:6379/0"
    key = f"hook-{uuid.uuid4().hex}"
    first, second = RedisRateLimiter(url, 2), RedisRateLimiter(url, 2)  # two API processes
    try:
        answers = [await first.hit(key), await second.hit(key), await first.hit(key), await second.hit(key)]
    finally:
        await first.close()
        await second.close()
    assert answers[:2] == [None, None], answers
    assert all(a is not None and 59 < a <= 60 for a in answers[2:]), answers
    now = [120.5]
    memory = MemoryRateLimiter(2, clock=lambda: now[0])
    assert await memory.hit("a") is None
    now[0] = 150.0
    assert await memory.hit("a") is None and await memory.hit("a") == pytest.approx(30.5)
    assert await memory.hit("b") is None
    now[0] = 181.0  # the first hit has left the window, the second has not
    assert await memory.hit("a") is None and await memory.hit("a") == pytest.approx(29.0)


async def test_wait_answers_the_result_when_the_run_ends_in_time(api):
    workflow_id, hook = await workflow_with_hook(api)
    answer = await deliver(api, hook, {"who": "Waiter"}, params={"wait": 30})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed" and answer.json()["output"] == "Hello Waiter"
    assert answer.json()["trigger"] == {"type": "webhook", "webhook_id": hook["id"]}
    too_long = await deliver(api, hook, {"who": "x"}, params={"wait": 31})
    assert too_long.status_code == 422 and too_long.json()["issues"][0]["field"] == "query.wait"
    slow = canvas(
        [node("start", "start"), node("slow", "test_sleep", data={"seconds": 20})],
        [("start", "slow")],
        name=f"slow-{uuid.uuid4().hex[:6]}",
    )
    slow_id = (await api.post("/api/workflows", json={"canvas": slow})).json()["id"]
    slow_hook = (await api.post(f"/api/workflows/{slow_id}/webhooks", json={"name": "slow"})).json()
    started = time.monotonic()
    pending = await deliver(api, slow_hook, {}, params={"wait": 1})
    assert pending.status_code == 202 and set(pending.json()) == {"execution_id"}
    assert time.monotonic() - started < 10


async def test_managing_webhooks_never_shows_a_secret_again(api, stack):
    workflow_id, hook = await workflow_with_hook(api)
    listed = (await api.get(f"/api/workflows/{workflow_id}/webhooks")).json()
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    assert hook["secret"] not in json.dumps(listed)
    # A dump of the database does not show it either: it is stored encrypted.
    _url, _pool, database = stack
    connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}")
    try:
        stored = await connection.fetchval("SELECT secret_encrypted FROM webhooks WHERE id = $1", hook["id"])
    finally:
        await connection.close()
    assert stored and hook["secret"] not in stored
    assert (await api.get(f"/api/workflows/{workflow_id}/webhooks", headers=api.bob)).status_code == 404
    assert (await api.delete(f"/api/workflows/{workflow_id}/webhooks/{hook['id']}", headers=api.bob)).status_code == 404
    assert (
        await api.post(f"/api/workflows/{workflow_id}/webhooks/{hook['id']}/rotate", headers=api.bob)
    ).status_code == 404
    for body in ({}, {"name": ""}, {"name": "x", "extra": 1}):
        bad = await api.post(f"/api/workflows/{workflow_id}/webhooks", json=body)
        assert bad.status_code == 422 and bad.json()["issues"][0]["field"].startswith("body"), bad.text
    assert (await api.post("/api/workflows/nope/webhooks", json={"name": "x"})).status_code == 404
    assert (await api.delete(f"/api/workflows/{workflow_id}/webhooks/{hook['id']}")).status_code == 204
    assert (await deliver(api, hook, {"who": "x"})).status_code == 404
    assert (await api.post(f"/hooks/{uuid.uuid4()}", content=b"{}")).status_code == 404


def test_the_secret_key_comes_from_the_environment_or_a_private_key_file(tmp_path):
    from_env = SecretBox.from_settings("any passphrase", tmp_path)
    sealed = from_env.seal("whsec_abc")
    assert "whsec_abc" not in sealed and SecretBox.from_settings("any passphrase", tmp_path).open(sealed) == "whsec_abc"
    with pytest.raises(ValueError, match="FLOWMAESTRO_SECRET_KEY"):
        SecretBox.from_settings("another", tmp_path).open(sealed)
    assert not (tmp_path / KEY_FILE).exists()
    from_file = SecretBox.from_settings(None, tmp_path)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert SecretBox.from_settings(None, tmp_path).open(from_file.seal("s")) == "s"  # the same key next time
