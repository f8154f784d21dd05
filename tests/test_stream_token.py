"""Stream tokens (runtime-v1 section 5) and CORS, on the ASGI app: a token reads its run's
stream and nothing else, expires, and is refused with a 401/403 that says why. The runs
here are rows and events written directly (no Prefect: a run whose final event is stored
streams from the event log alone)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import httpx
import pytest

from api.settings import ApiSettings
from api.stream_tokens import StreamTokens
from flows.events import RunEvent, utcnow
from tests.support import api_without_prefect

ALICE, BOB = "alice-key", "bob-key"
ORIGIN = "http://frontend.example:3000"


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    home = tmp_path_factory.mktemp("stream-token")
    return ApiSettings(
        api_keys=f"alice:{ALICE},bob:{BOB}",
        home=home,
        database_url=f"sqlite+aiosqlite:///{home / 'api.db'}",
        cors_origins=[ORIGIN],
    )


@pytest.fixture(scope="module")
async def client(settings):
    async with api_without_prefect(settings, ALICE) as client:
        yield client


async def finished_run(client: httpx.AsyncClient, owner: str = "alice") -> str:
    """A run of ``owner`` in the store with three events, the last one final."""
    app = client._transport.app  # type: ignore[attr-defined]
    run_id = str(uuid.uuid4())
    await app.state.runs.executions.record_start(
        execution_id=run_id,
        owner=owner,
        workflow_id=str(uuid.uuid4()),
        version=1,
        workflow_name="w",
        inputs={},
        trigger={"type": "api"},
    )
    now = utcnow().isoformat()
    await app.state.event_log.append(
        [
            RunEvent(1, "execution:started", run_id, now, data={"workflow": "w"}),
            RunEvent(2, "node:started", run_id, now, node_id="a", path=(), data={"type": "transform", "label": "a"}),
            RunEvent(3, "execution:completed", run_id, now, data={"status": "completed", "output": 1, "error": None}),
        ]
    )
    return run_id


def events_of(text: str) -> list[tuple[str, str]]:
    found = []
    for block in text.split("\r\n\r\n" if "\r\n" in text else "\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            found.append((fields["id"], fields["event"]))
    return found


async def token_for(client: httpx.AsyncClient, run_id: str, key: str = ALICE) -> dict:
    answer = await client.post(f"/api/executions/{run_id}/stream-token", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_a_token_reads_its_run_stream_without_a_key(client):
    run_id = await finished_run(client)
    issued = await token_for(client, run_id)
    ttl = datetime.fromisoformat(issued["expires_at"]).timestamp() - time.time()
    assert 590 < ttl <= 600, "ten minutes by default"
    assert issued["stream"] == f"/api/executions/{run_id}/stream?token={issued['token']}"
    answer = await client.get(issued["stream"], headers={"Authorization": ""})
    assert answer.status_code == 200, answer.text
    assert events_of(answer.text) == [("1", "execution:started"), ("2", "node:started"), ("3", "execution:completed")]
    resumed = await client.get(issued["stream"] + "&after=2", headers={"Authorization": ""})
    assert events_of(resumed.text) == [("3", "execution:completed")]
    again = await client.get(issued["stream"], headers={"Authorization": "", "Last-Event-ID": "1"})
    assert [e[0] for e in events_of(again.text)] == ["2", "3"]


async def test_a_token_of_another_run_is_403_and_names_both(client):
    mine, other = await finished_run(client), await finished_run(client)
    token = (await token_for(client, mine))["token"]
    answer = await client.get(f"/api/executions/{other}/stream", params={"token": token}, headers={"Authorization": ""})
    assert answer.status_code == 403
    assert answer.json()["detail"] == f"this stream token reads execution {mine}, not {other}"


async def test_an_expired_token_is_401_saying_so(client):
    run_id = await finished_run(client)
    app = client._transport.app  # type: ignore[attr-defined]
    tokens: StreamTokens = app.state.stream_tokens
    token, _ = tokens.issue(run_id, "alice", now=time.time() - tokens.ttl_s - 1)
    answer = await client.get(
        f"/api/executions/{run_id}/stream", params={"token": token}, headers={"Authorization": ""}
    )
    assert answer.status_code == 401
    assert answer.json()["detail"].startswith("stream token expired at ")
    assert f"POST /api/executions/{run_id}/stream-token" in answer.json()["detail"]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: "v1." + t.split(".")[1][:-1] + "x." + t.split(".")[2],  # payload changed
        lambda t: "v2" + t[2:],
        lambda t: "garbage",
        lambda t: "",
    ],
    ids=["signature", "payload", "version", "garbage", "empty"],
)
async def test_a_forged_or_mangled_token_is_401(client, mangle):
    run_id = await finished_run(client)
    token = (await token_for(client, run_id))["token"]
    answer = await client.get(
        f"/api/executions/{run_id}/stream", params={"token": mangle(token)}, headers={"Authorization": ""}
    )
    assert answer.status_code == 401, answer.text
    assert answer.json()["detail"] in ("invalid stream token", "missing bearer API key (or ?token= stream token)")


async def test_a_token_signed_with_another_key_is_401(client):
    run_id = await finished_run(client)
    token, _ = StreamTokens(b"another deployment's key", 600).issue(run_id, "alice")
    answer = await client.get(
        f"/api/executions/{run_id}/stream", params={"token": token}, headers={"Authorization": ""}
    )
    assert answer.status_code == 401 and answer.json()["detail"] == "invalid stream token"


async def test_a_token_opens_no_other_route(client):
    run_id = await finished_run(client)
    token = (await token_for(client, run_id))["token"]
    for method, path in [
        ("GET", f"/api/executions/{run_id}"),
        ("POST", f"/api/executions/{run_id}/cancel"),
        ("POST", f"/api/executions/{run_id}/stream-token"),
        ("GET", "/api/workflows"),
    ]:
        answer = await client.request(
            method, path, params={"token": token}, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 401, (method, path, answer.text)


async def test_tokens_are_per_owner_and_need_a_key(client):
    run_id = await finished_run(client)
    other = await client.post(f"/api/executions/{run_id}/stream-token", headers={"Authorization": f"Bearer {BOB}"})
    assert other.status_code == 404, "another owner's run does not exist for them"
    nobody = await client.post(f"/api/executions/{run_id}/stream-token", headers={"Authorization": ""})
    assert nobody.status_code == 401
    bare = await client.get(f"/api/executions/{run_id}/stream", headers={"Authorization": ""})
    assert bare.status_code == 401
    assert bare.json()["detail"] == "missing bearer API key (or ?token= stream token)"
    unknown = await client.post(f"/api/executions/{uuid.uuid4()}/stream-token")
    assert unknown.status_code == 404


async def test_a_token_ends_with_its_owner_key(client):
    """A token of an owner whose key was removed is refused, even before it expires."""
    run_id = await finished_run(client, owner="carol")
    app = client._transport.app  # type: ignore[attr-defined]
    token, _ = app.state.stream_tokens.issue(run_id, "carol")
    answer = await client.get(
        f"/api/executions/{run_id}/stream", params={"token": token}, headers={"Authorization": ""}
    )
    assert answer.status_code == 401 and "no longer accepted" in answer.json()["detail"]


async def test_cors_lets_the_configured_origin_ask_for_a_token_and_stream(client):
    run_id = await finished_run(client)
    preflight = await client.options(
        f"/api/executions/{run_id}/stream-token",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    token = (await token_for(client, run_id))["token"]
    stream = await client.get(
        f"/api/executions/{run_id}/stream", params={"token": token}, headers={"Authorization": "", "Origin": ORIGIN}
    )
    assert stream.status_code == 200 and stream.headers["access-control-allow-origin"] == ORIGIN
    elsewhere = await client.options(
        f"/api/executions/{run_id}/stream-token",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in elsewhere.headers


async def test_ui_pages_are_public_shells_with_a_strict_policy(client):
    for path in ("/ui/", "/ui/new", f"/ui/executions/{uuid.uuid4()}"):
        page = await client.get(path, headers={"Authorization": ""})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert (await client.get("/ui", headers={"Authorization": ""}, follow_redirects=False)).headers[
        "location"
    ] == "/ui/"
    script = await client.get("/ui/static/run.js", headers={"Authorization": ""})
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "innerHTML" not in script.text


def test_access_logs_do_not_keep_tokens():
    import logging

    from api.stream_tokens import RedactStreamTokens

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/api/executions/x/stream?after=3&token=v1.abc.def", "1.1", 200),
        None,
    )
    RedactStreamTokens().filter(record)
    assert (
        record.getMessage() == '127.0.0.1:5000 - "GET /api/executions/x/stream?after=3&token=[redacted] HTTP/1.1" 200'
    )
