"""Third-party webhooks (issue 31, major 3): GitHub, Stripe, Slack and generic HMAC
signatures, checked with each sender's documented algorithm, and the mapping from a
request (body, headers, query) to run inputs.

The pure checks use the senders' published test vectors (GitHub's and Slack's docs give a
secret, a payload and the signature expected). The deliveries go through the real API on
PostgreSQL with the session's Prefect server and a worker in this process, with payloads
shaped like the senders' documented examples, signed with a test secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from api.signing import BadSignature
from api.webhook_schemes import VERIFICATION, InputMapping, map_inputs, verify_request
from tests.support import canvas, node
from tests.test_webhooks import executions, make_api, stack, wait_final  # noqa: F401 (fixtures)

# GitHub's "Validating webhook deliveries" page: this secret and payload give this header.
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_PAYLOAD = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
# Slack's "Verifying requests from Slack" page: a slash command, its timestamp and signature.
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TIMESTAMP = "1531420618"
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

STRIPE_SECRET = "whsec_test_" + "5" * 32
# Shaped like Stripe's documented `payment_intent.succeeded` event.
STRIPE_EVENT = {
    "id": "evt_3MtwBwLkdIwHu7ix28a3tqPa",
    "object": "event",
    "api_version": "2022-11-15",
    "created": 1680064028,
    "type": "payment_intent.succeeded",
    "data": {"object": {"id": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "object": "payment_intent", "amount": 2000}},
    "livemode": False,
}
# Shaped like GitHub's documented `push` event (trimmed).
GITHUB_PUSH = {
    "ref": "refs/heads/main",
    "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
    "after": "0000000000000000000000000000000000000000",
    "repository": {"id": 186853002, "name": "Hello-World", "full_name": "Codertocat/Hello-World"},
    "pusher": {"name": "Codertocat", "email": "21031067+Codertocat@users.noreply.github.com"},
    "sender": {"login": "Codertocat", "id": 21031067},
}


def stripe_header(secret: str, body: bytes, timestamp: int) -> str:
    """Stripe's documented algorithm: HMAC-SHA256 of ``<t>.<payload>``, as ``t=...,v1=...``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"


# ------------------------------------------------------------------------------ pure checks


def test_github_documented_test_vector_verifies_and_a_changed_byte_does_not():
    scheme = VERIFICATION.validate_python({"scheme": "github"})
    verified = verify_request(scheme, GITHUB_SECRET, {"x-hub-signature-256": GITHUB_SIGNATURE}, GITHUB_PAYLOAD, 0)
    assert verified.signature == GITHUB_SIGNATURE
    with pytest.raises(BadSignature, match="X-Hub-Signature-256 does not match the body"):
        verify_request(scheme, GITHUB_SECRET, {"x-hub-signature-256": GITHUB_SIGNATURE}, b"Hello, World?", 0)
    with pytest.raises(BadSignature, match="missing X-Hub-Signature-256"):
        verify_request(scheme, GITHUB_SECRET, {}, GITHUB_PAYLOAD, 0)


def test_slack_documented_test_vector_verifies_within_five_minutes_only():
    scheme = VERIFICATION.validate_python({"scheme": "slack"})
    headers = {"x-slack-request-timestamp": SLACK_TIMESTAMP, "x-slack-signature": SLACK_SIGNATURE}
    now = int(SLACK_TIMESTAMP) + 10
    assert verify_request(scheme, SLACK_SECRET, headers, SLACK_BODY, now).signature.endswith(SLACK_SIGNATURE)
    with pytest.raises(BadSignature, match="more than 300 s old"):
        verify_request(scheme, SLACK_SECRET, headers, SLACK_BODY, int(SLACK_TIMESTAMP) + 301)
    with pytest.raises(BadSignature, match="X-Slack-Signature does not match"):
        verify_request(scheme, "another-secret-of-the-app", headers, SLACK_BODY, now)


def test_stripe_signature_with_its_tolerance_and_several_v1():
    body = json.dumps(STRIPE_EVENT).encode()
    now = 1_700_000_000
    scheme = VERIFICATION.validate_python({"scheme": "stripe", "tolerance_s": 120})
    good = stripe_header(STRIPE_SECRET, body, now - 100)
    assert verify_request(scheme, STRIPE_SECRET, {"stripe-signature": good}, body, now).signature.startswith(
        f"{now - 100}:"
    )
    rolled = f"t={now},v1={'0' * 64},v1={stripe_header(STRIPE_SECRET, body, now).split('v1=')[1].split(',')[0]}"
    verify_request(scheme, STRIPE_SECRET, {"stripe-signature": rolled}, body, now)  # one v1 of two matches
    refused = {
        "stale": (stripe_header(STRIPE_SECRET, body, now - 121), "more than 120 s old"),
        "ahead": (stripe_header(STRIPE_SECRET, body, now + 60), "ahead of the server's time"),
        "other secret": (stripe_header("whsec_other", body, now), "does not match"),
        "no v1": (f"t={now}", "no v1 signature"),
        "no t": (good.split(",", 1)[1], "no timestamp"),
        "t not signed": (good.replace(f"t={now - 100}", f"t={now - 99}"), "does not match"),
    }
    for why, (header, message) in refused.items():
        with pytest.raises(BadSignature, match=message):
            verify_request(scheme, STRIPE_SECRET, {"stripe-signature": header}, body, now)
        assert why


@pytest.mark.parametrize(
    ("options", "encode"),
    [
        ({}, lambda d: d.hex()),
        ({"encoding": "base64", "algorithm": "sha512"}, lambda d: base64.b64encode(d).decode()),
        ({"prefix": "sha1=", "algorithm": "sha1"}, lambda d: "sha1=" + d.hex()),
    ],
)
def test_a_generic_hmac_header_with_its_name_algorithm_and_encoding(options, encode):
    scheme = VERIFICATION.validate_python({"scheme": "hmac", "header": "X-Acme-Signature", **options})
    body = b'{"order": 7}'
    digest = hmac.new(b"acme-shared-secret", body, getattr(hashlib, options.get("algorithm", "sha256"))).digest()
    verify_request(scheme, "acme-shared-secret", {"x-acme-signature": encode(digest)}, body, 0)
    with pytest.raises(BadSignature, match="X-Acme-Signature does not match"):
        verify_request(scheme, "acme-shared-secret", {"x-acme-signature": encode(digest)}, body + b" ", 0)


def test_scheme_options_are_checked_and_name_the_field():
    for bad, message in [
        ({"scheme": "hmac"}, "hmac.header\n  Field required"),
        ({"scheme": "github", "header": "X-Sig"}, "github.header\n  Extra inputs are not permitted"),
        ({"scheme": "stripe", "tolerance_s": 3600}, "less than or equal to 300"),
        ({"scheme": "svix"}, "'flowmaestro', 'github', 'stripe', 'slack', 'hmac'"),
        ({"scheme": "hmac", "header": "bad header"}, "should match pattern"),
        ({}, "Unable to extract tag using discriminator 'scheme'"),
    ]:
        with pytest.raises(ValidationError, match=message):
            VERIFICATION.validate_python(bad)
    for bad in ({"headers": {"event": ""}}, {"query": {"": "src"}}, {"headers": {"event": "bad header"}}):
        with pytest.raises(ValidationError):
            InputMapping.model_validate(bad)


def test_the_request_maps_to_inputs():
    headers = {"x-github-event": "push", "content-type": "application/json"}
    whole = InputMapping(body="payload", headers={"event": "X-GitHub-Event"}, query={"source": "src"})
    body = json.dumps(GITHUB_PUSH).encode()
    assert map_inputs(whole, body, "application/json", headers, {"src": "gh"}) == (
        {"payload": GITHUB_PUSH, "event": "push", "source": "gh"},
        None,
    )
    assert map_inputs(None, b'{"who": "Ada"}', "application/json", {}, {}) == ({"who": "Ada"}, None)
    assert map_inputs(None, b"[1]", "application/json", {}, {})[1] == (
        "the request body must be a JSON object of the workflow's inputs"
    )
    form = map_inputs(InputMapping(body="command"), SLACK_BODY, "application/x-www-form-urlencoded", {}, {})
    assert form[0]["command"]["command"] == "/webhook-collect" and form[0]["command"]["text"] == ""
    assert map_inputs(InputMapping(body="text"), b"plain words", "text/plain", {}, {}) == (
        {"text": "plain words"},
        None,
    )
    # An absent header leaves its input out (its default applies, or 422 input_missing).
    assert map_inputs(whole, b"{}", None, {}, {}) == ({"payload": {}}, None)


# ------------------------------------------------------------------- deliveries end to end


def push_workflow() -> dict[str, Any]:
    return canvas(
        [
            node("start", "start"),
            node(
                "summary",
                data={
                    "output": "{{ inputs.event }}:{{ inputs.payload.repository.full_name }}@{{ inputs.payload.ref }}"
                },
            ),
            node("end", "end", data={"output": "{{ summary }}"}),
        ],
        [("start", "summary"), ("summary", "end")],
        name=f"push-{uuid.uuid4().hex[:6]}",
        inputs={"payload": {"type": "object", "required": True}, "event": {"type": "string", "required": True}},
    )


async def save_with_hook(api, raw: dict[str, Any], hook: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    saved = await api.post("/api/workflows", json={"canvas": raw})
    assert saved.status_code == 201, saved.text
    workflow_id = saved.json()["id"]
    created = await api.post(f"/api/workflows/{workflow_id}/webhooks", json=hook)
    assert created.status_code == 201, created.text
    return workflow_id, created.json()


async def test_a_github_push_delivery_starts_a_run_with_the_whole_body_and_the_event_header(make_api):
    async with make_api() as api:
        workflow_id, hook = await save_with_hook(
            api,
            push_workflow(),
            {
                "name": "github push",
                "verification": {"scheme": "github"},
                "inputs": {"body": "payload", "headers": {"event": "X-GitHub-Event"}},
                "secret": GITHUB_SECRET,
            },
        )
        listed = (await api.get(f"/api/workflows/{workflow_id}/webhooks")).json()
        assert [(h["verification"], h["inputs"]) for h in listed] == [
            ({"scheme": "github"}, {"body": "payload", "headers": {"event": "X-GitHub-Event"}, "query": {}})
        ]
        assert "secret" not in listed[0]
        body = json.dumps(GITHUB_PUSH).encode()
        signature = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
        delivery = str(uuid.uuid4())
        headers = {
            "Authorization": "",
            "content-type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
        }
        first = await api.post(hook["url"], content=body, headers=headers)
        assert first.status_code == 202, first.text
        result = await wait_final(api, first.json()["execution_id"])
        assert (result["status"], result["output"]) == ("completed", "push:Codertocat/Hello-World@refs/heads/main")
        # GitHub's redelivery (same delivery id, same body and signature) starts nothing.
        again = await api.post(hook["url"], content=body, headers=headers)
        assert (again.status_code, again.json()) == (200, first.json())
        # Wrong signatures: 401 naming the header, and nothing starts.
        for bad in (GITHUB_SIGNATURE, signature.replace("sha256=", "sha1="), ""):
            refused = await api.post(
                hook["url"], content=body, headers={**headers, "X-Hub-Signature-256": bad, "X-GitHub-Delivery": "x"}
            )
            assert refused.status_code == 401, refused.text
            assert "X-Hub-Signature-256" in refused.json()["detail"]
        # Our own scheme's headers do not open a GitHub hook.
        assert (await api.post(hook["url"], content=body, headers={"Authorization": ""})).status_code == 401
        assert len(await executions(api, workflow_id)) == 1


async def test_a_stripe_event_delivery_a_stale_one_and_a_replay(make_api):
    raw = canvas(
        [
            node("start", "start"),
            node("kind", data={"output": "{{ inputs.event.type }}/{{ inputs.event.data.object.amount }}"}),
            node("end", "end", data={"output": "{{ kind }}"}),
        ],
        [("start", "kind"), ("kind", "end")],
        name=f"stripe-{uuid.uuid4().hex[:6]}",
        inputs={"event": {"type": "object", "required": True}},
    )
    async with make_api() as api:
        workflow_id, hook = await save_with_hook(
            api,
            raw,
            {
                "name": "stripe",
                "verification": {"scheme": "stripe", "tolerance_s": 300},
                "inputs": {"body": "event"},
                "secret": STRIPE_SECRET,
            },
        )
        assert hook["secret"] == STRIPE_SECRET  # the sender's own secret, shown once
        body = json.dumps(STRIPE_EVENT).encode()
        now = int(time.time())
        headers = {"Authorization": "", "content-type": "application/json"}
        accepted = await api.post(
            hook["url"], content=body, headers={**headers, "Stripe-Signature": stripe_header(STRIPE_SECRET, body, now)}
        )
        assert accepted.status_code == 202, accepted.text
        result = await wait_final(api, accepted.json()["execution_id"])
        assert result["output"] == "payment_intent.succeeded/2000"
        replay = await api.post(
            hook["url"], content=body, headers={**headers, "Stripe-Signature": stripe_header(STRIPE_SECRET, body, now)}
        )
        assert replay.status_code == 409, replay.text
        stale = await api.post(
            hook["url"],
            content=body,
            headers={**headers, "Stripe-Signature": stripe_header(STRIPE_SECRET, body, now - 301)},
        )
        assert stale.status_code == 401 and "more than 300 s old" in stale.json()["detail"], stale.text
        tampered = await api.post(
            hook["url"],
            content=body.replace(b"2000", b"1"),
            headers={**headers, "Stripe-Signature": stripe_header(STRIPE_SECRET, body, now - 1)},
        )
        assert tampered.status_code == 401, tampered.text
        assert [e["id"] for e in await executions(api, workflow_id)] == [accepted.json()["execution_id"]]


async def test_bad_scheme_options_are_422_naming_the_field(make_api):
    async with make_api() as api:
        workflow_id = (await api.post("/api/workflows", json={"canvas": push_workflow()})).json()["id"]
        answer = await api.post(
            f"/api/workflows/{workflow_id}/webhooks", json={"name": "x", "verification": {"scheme": "hmac"}}
        )
        assert answer.status_code == 422, answer.text
        (issue,) = answer.json()["issues"]
        assert issue["field"] == "body.verification.hmac.header" and issue["message"] == "Field required", issue
