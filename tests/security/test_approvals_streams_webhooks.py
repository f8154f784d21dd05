"""Issue 30, findings 6, 11 and 12: forged approval decisions, stream resume ids no event can
have, replayed webhook requests. Each test performs the attack as the penetration test did."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.settings import ApiSettings
from flows.event_log import RedisEventLog, SqlEventLog
from store.queries import Executions
from tests.support import prefect_flow_run_id
from tests.test_webhooks import KEY, api, deliver, executions, make_api, signed, stack, workflow_with_hook  # noqa: F401  (fixtures)

REDIS_URL = "redis://127.0.0.1:6379/0"


# --- finding 11: ?after= / Last-Event-ID above 2^63 -----------------------------------------------


@asynccontextmanager
async def api_with_a_run(tmp_path):
    """The API on SQLite (Prefect unreachable: the stream is refused before Prefect is asked)
    with one execution of its owner, and a client with the owner's key."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.processes import free_port

    settings = ApiSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'api.db'}", api_keys=f"ada:{KEY}-ada", home=tmp_path
    )
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            run_id = str(uuid.uuid4())
            await Executions(app.state.sessions).record_start(
                execution_id=run_id,
                owner="ada",
                workflow_id="w",
                version=1,
                workflow_name="w",
                inputs={},
                trigger={"type": "api"},
            )
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
                headers={"Authorization": f"Bearer {KEY}-ada"},
            ) as client:
                yield client, run_id


async def test_stream_resume_ids_beyond_a_64_bit_seq_are_a_clean_422(tmp_path):
    async with api_with_a_run(tmp_path) as (client, run_id):
        stream = f"/api/executions/{run_id}/stream"
        after = await client.get(stream, params={"after": 2**63})
        assert after.status_code == 422, after.text
        assert after.json()["issues"][0]["field"] == "query.after"
        last = await client.get(stream, headers={"Last-Event-ID": str(2**64)})
        assert last.status_code == 422, last.text
        assert last.json()["issues"][0]["field"] == "header.Last-Event-ID"
        # Not a number (or not ASCII digits): replay from the start, as before.
        assert (await client.get(stream, params={"after": -1})).status_code == 422


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.services)])
async def test_event_logs_refuse_an_after_no_seq_can_reach(backend, tmp_path):
    log = (
        RedisEventLog(REDIS_URL) if backend == "redis" else SqlEventLog(f"sqlite+aiosqlite:///{tmp_path / 'events.db'}")
    )
    run = str(uuid.uuid4())
    try:
        assert await log.read(run, after=2**63 - 1) == []
        for after in (2**63, 2**64, -1):
            with pytest.raises(ValueError, match="after must be between 0 and"):
                await log.read(run, after=after)
            with pytest.raises(ValueError, match="after must be between 0 and"):
                await anext(log.follow(run, after=after, idle_timeout=0.1))
    finally:
        await log.close()


# --- finding 12: signed webhook requests replayed, timestamps far ahead ---------------------------


@pytest.mark.prefect
async def test_a_replayed_signed_webhook_request_starts_no_second_run(api):
    workflow_id, hook = await workflow_with_hook(api)
    body = json.dumps({"who": "once"}).encode()
    headers = {"Authorization": "", **signed(hook["secret"], body)}
    first = await api.post(hook["url"], content=body, headers=headers)
    assert first.status_code == 202, first.text
    replay = await api.post(hook["url"], content=body, headers=headers)
    assert replay.status_code == 409, replay.text
    assert "replay" in replay.json()["detail"]
    # An Idempotency-Key is not signed: adding a fresh one does not make a replay new.
    keyed = await api.post(hook["url"], content=body, headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
    assert keyed.status_code == 409, keyed.text
    assert [e["id"] for e in await executions(api, workflow_id)] == [first.json()["execution_id"]]
    # The same body signed anew (its own timestamp, not the first's) is a new request.
    anew = int(headers["X-FlowMaestro-Timestamp"]) - 1
    headers_anew = {"Authorization": "", **signed(hook["secret"], body, anew)}
    again = await api.post(hook["url"], content=body, headers=headers_anew)
    assert again.status_code == 202, again.text
    assert len(await executions(api, workflow_id)) == 2


@pytest.mark.prefect
async def test_a_request_that_started_nothing_may_be_sent_again(make_api):
    async with make_api(webhook_rate_limit=1) as api:
        workflow_id, hook = await workflow_with_hook(api)
        assert (await deliver(api, hook, {"who": "first"})).status_code == 202
        body = json.dumps({"who": "second"}).encode()
        headers = {"Authorization": "", **signed(hook["secret"], body)}
        assert (await api.post(hook["url"], content=body, headers=headers)).status_code == 429
        # Refused for the rate, not a replay: the same request is refused for the rate again.
        assert (await api.post(hook["url"], content=body, headers=headers)).status_code == 429
        assert len(await executions(api, workflow_id)) == 1


@pytest.mark.prefect
async def test_a_timestamp_more_than_30_s_ahead_is_refused(api):
    workflow_id, hook = await workflow_with_hook(api)
    body = json.dumps({"who": "future"}).encode()
    now = int(time.time())
    ahead = await api.post(
        hook["url"], content=body, headers={"Authorization": "", **signed(hook["secret"], body, now + 120)}
    )
    assert ahead.status_code == 401, ahead.text
    assert (
        ahead.json()["detail"] == "invalid webhook signature: X-FlowMaestro-Timestamp is more than 30 s ahead "
        "of the server's time"
    )
    for not_a_time in ("²".encode(), b"1" * 40):  # isdigit() accepts '²'; int() refuses it
        odd = await api.post(
            hook["url"],
            content=body,
            headers={"Authorization": "", **signed(hook["secret"], body), "X-FlowMaestro-Timestamp": not_a_time},
        )
        assert odd.status_code == 401, odd.text
    assert await executions(api, workflow_id) == []
    # Clock drift within the skew is fine.
    slightly = await api.post(
        hook["url"], content=body, headers={"Authorization": "", **signed(hook["secret"], body, now + 20)}
    )
    assert slightly.status_code == 202, slightly.text


@pytest.mark.services
async def test_signatures_are_remembered_across_api_processes_for_the_window():
    from redis.asyncio import Redis

    from api.replay_guard import MemoryReplayGuard, RedisReplayGuard

    hook = f"hook-{uuid.uuid4().hex}"
    first, second = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)  # two API processes
    try:
        one, two = RedisReplayGuard(first), RedisReplayGuard(second)
        assert await one.first_use(hook, "sha256=abc") is True
        assert await two.first_use(hook, "sha256=abc") is False
        assert await two.first_use(hook, "sha256=abd") is True
        remembered = one.prefix + f"{hook}:" + hashlib.sha256(b"sha256=abc").hexdigest()
        assert 325 <= await first.ttl(remembered) <= 331
        await two.forget(hook, "sha256=abc")
        assert await one.first_use(hook, "sha256=abc") is True
    finally:
        await first.aclose()
        await second.aclose()
    now = [100.0]
    memory = MemoryReplayGuard(clock=lambda: now[0])
    assert await memory.first_use("h", "s") and not await memory.first_use("h", "s")
    assert await memory.first_use("other", "s")
    now[0] += 331.5  # past the window: the timestamp check refuses it by then
    assert await memory.first_use("h", "s")


# --- finding 6: approval decisions forged through Prefect -------------------------------------------


def test_decisions_are_checked_strictly_against_the_form_and_believed_only_when_signed():
    """The rule every way a decision comes in goes through (no server needed)."""
    from flows.decisions import DecisionSigner, Refused, Taken, take
    from node_handlers.approval import ApprovalConfig

    config = ApprovalConfig(form={"reason": {"type": "string", "required": True}, "count": {"type": "integer"}})
    ours, theirs = DecisionSigner(b"the decision key"), DecisionSigner(b"a guess")
    run, slug = str(uuid.uuid4()), "ask-1234abcd"

    def verdict(raw, signer=ours, allow=True, run_id=run):
        return take(raw, config, run_id=run_id, slug=slug, signer=signer, allow_unverified=allow)

    forged = {
        "outcome": "decided",
        "input": {"approved": True, "reason": "ok"},
        "decided_at": "2020-01-01T00:00:00Z",
        "decided_by": "mallory",
        "via": "api",
    }
    refused = {
        "missing required field": {**forged, "input": {"approved": True}},
        "unknown field": {**forged, "input": {"approved": True, "reason": "ok", "admin": True}},
        "approved as text": {**forged, "input": {"approved": "true", "reason": "ok"}},
        "integer as text": {**forged, "input": {"approved": True, "reason": "ok", "count": "3"}},
        "input not an object": {**forged, "input": ["approved"]},
        "unsigned timeout": {"outcome": "timeout", "decided_at": "2020-01-01T00:00:00Z", "via": "timeout"},
        "other outcome": {**forged, "outcome": "approved"},
    }
    for why, raw in refused.items():
        assert isinstance(verdict(raw), Refused), why
        assert isinstance(verdict(ours.sign(run, slug, raw)), Refused) or why == "unsigned timeout", why
    assert "reason: Field required" in verdict(refused["missing required field"]).reason
    assert "admin: Extra inputs are not permitted" in verdict(refused["unknown field"]).reason
    # Unsigned (or signed with another key, or for another run): taken as an answer through
    # Prefect, never as who it says decided.
    for raw in (
        forged,
        {**forged, "signature": "v1:" + "0" * 64},
        theirs.sign(run, slug, forged),
        ours.sign(str(uuid.uuid4()), slug, forged),
        ours.sign(run, "other-slug", forged),
    ):
        taken = verdict(raw)
        assert isinstance(taken, Taken)
        assert taken.decision["via"] == "prefect-ui" and taken.decision["decided_by"] is None
        assert taken.decision["decided_at"] != forged["decided_at"]
        assert isinstance(verdict(raw, allow=False), Refused)
    # Signed by the API: taken as it says, when it fits the form.
    signed_decision = verdict(ours.sign(run, slug, forged), allow=False)
    assert isinstance(signed_decision, Taken)
    assert (signed_decision.decision["decided_by"], signed_decision.decision["via"]) == ("mallory", "api")
    tampered = {**ours.sign(run, slug, forged), "decided_by": "root"}
    assert verdict(tampered).decision["decided_by"] is None
    timeout = ours.sign(run, slug, refused["unsigned timeout"])
    assert verdict(timeout).decision["outcome"] == "timeout"


class Refusals(logging.Handler):
    """Collects the approval gate's refusals (it runs in this process)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    async def wait_for(self, count: int, run, timeout: float = 120):
        deadline = asyncio.get_running_loop().time() + timeout
        while len([m for m in self.messages if "refused the decision" in m]) < count:
            assert not run.task.done(), f"the run ended instead of refusing: {self.messages}"
            assert asyncio.get_running_loop().time() < deadline, f"no refusal: {self.messages}"
            await asyncio.sleep(0.1)


@pytest.fixture
def refusals():
    handler = Refusals()
    logger = logging.getLogger("flowmaestro.approvals")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


async def write_as_anyone_reaching_prefect(run_id: str, key: str, decision: dict[str, Any]) -> None:
    """What anyone who reaches the Prefect API can do to a run's inputs."""
    from prefect.client.orchestration import get_client

    flow_run = uuid.UUID(await prefect_flow_run_id(run_id))  # approvals live on the flow run
    async with get_client() as client:
        existing = await client.filter_flow_run_input(flow_run, key_prefix=key, limit=1, exclude_keys=set())
        if existing:
            await client.delete_flow_run_input(flow_run, key)
        await client.create_flow_run_input(flow_run, key=key, value=json.dumps(decision))


FORGED = {
    "outcome": "decided",
    "decided_at": "2020-01-01T00:00:00+00:00",
    "decided_by": "mallory",
    "via": "api",
    "signature": "v1:" + "0" * 64,
}


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server", "test_handlers")
async def test_decisions_forged_through_prefect_are_refused_or_recorded_as_unverified(run_context, refusals):
    from flows.approvals import approval_slug
    from tests.test_approvals import Started, approval_canvas

    run = Started(run_context, approval_canvas())
    await run.pending(1)
    run_id, key = await run.id(), "fm-decision-" + approval_slug("ask", ())
    await write_as_anyone_reaching_prefect(run_id, key, {**FORGED, "input": {"approved": True}})
    await refusals.wait_for(1, run)
    assert "reason: Field required" in refusals.messages[-1]
    await write_as_anyone_reaching_prefect(
        run_id, key, {**FORGED, "input": {"approved": True, "reason": "x", "admin": True}}
    )
    await refusals.wait_for(2, run)
    assert "admin: Extra inputs are not permitted" in refusals.messages[-1]
    await write_as_anyone_reaching_prefect(
        run_id, "fm-result-" + approval_slug("ask", ()), {"outcome": "timeout", "decided_at": FORGED["decided_at"]}
    )
    # A decision that fits the form, unsigned: taken as an answer through Prefect, not as mallory's.
    await write_as_anyone_reaching_prefect(run_id, key, {**FORGED, "input": {"approved": True, "reason": "forged"}})
    state, result = await run.result()
    assert state.is_completed(), result
    output = result["nodes"]["ask"]["output"]
    assert (output["decided_by"], output["via"], output["approved"]) == (None, "prefect-ui", True)
    assert output["decided_at"] != FORGED["decided_at"]


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server", "test_handlers")
async def test_with_prefect_answers_off_only_the_apis_signed_decision_is_taken(run_context, refusals):
    import dataclasses

    from flows.approvals import approval_slug, resume_approval
    from tests.test_approvals import Started, approval_canvas, signer_of

    strict = dataclasses.replace(
        run_context, settings=run_context.settings.model_copy(update={"approval_prefect_ui": False})
    )
    run = Started(strict, approval_canvas())
    await run.pending(1)
    run_id, key = await run.id(), "fm-decision-" + approval_slug("ask", ())
    await write_as_anyone_reaching_prefect(run_id, key, {**FORGED, "input": {"approved": False, "reason": "fits"}})
    await refusals.wait_for(1, run)
    assert "FLOWMAESTRO_APPROVAL_PREFECT_UI is off" in refusals.messages[-1]
    # The forged input under the key does not block the API: its signed decision replaces it.
    answer = await resume_approval(
        run_id, "ask", values={"approved": True, "reason": "reviewed"}, decided_by="ada", signer=signer_of(run_context)
    )
    assert answer.status == "accepted", answer.message
    state, result = await run.result()
    output = result["nodes"]["ask"]["output"]
    assert (output["decided_by"], output["via"], output["approved"]) == ("ada", "api", True)
    assert result["nodes"]["ship"]["output"] == "shipped because reviewed"


def test_a_signature_stays_used_when_prefect_may_have_started_its_run():
    """A delivery refused before any run (429, bad inputs, Redis down) may be sent again as is;
    one whose run Prefect may have created before it stopped answering may not: forgetting its
    signature would let a replay start a second run."""
    from api.errors import ApiError
    from api.webhook_service import started_nothing
    from store.errors import Invalid, Unavailable

    assert started_nothing(ApiError(429, "webhook rate limit reached"))
    assert started_nothing(Invalid("bad inputs", []))
    assert started_nothing(Unavailable("redis", "down"))
    assert not started_nothing(Unavailable("prefect", "did not answer in time"))
