"""Approvals an organisation uses, on a real API process and a real worker: approvers named
by user and by group, two of three required, a rejection, a non-approver refused (403), a
second decision by the same person refused (409), self-approval refused, the pending
approvals each person may decide listed across owners; reminders and an escalation received
by a local webhook server and a local SMTP server, and a decision through the emailed link
in Chromium."""

from __future__ import annotations

import json
import threading
import uuid
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from aiosmtpd.controller import Controller

from api.signing import sign
from tests.processes import free_port, postgres_database, stack_env, start_serve, start_worker
from tests.support import canvas, eventually, execute, node, save, wait_final
from tests.test_prefect_ui import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = [pytest.mark.prefect, pytest.mark.workers]

KEYS = {name: f"{name}-key-{uuid.uuid4().hex}" for name in ("olivia", "alice", "bob", "carol", "dave")}
"""Identities: the owner names of API keys. Olivia owns the workflows and starts the runs."""


def as_(base: str, name: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEYS[name]}"}, timeout=30)


def gate(name: str, **approval: object) -> dict:
    return canvas(
        [
            node("start", "start"),
            node(
                "ask",
                "approval",
                data={"message": "Ship it?", "form": {"note": {"type": "string"}}, **approval},
            ),
            node("yes", data={"output": "shipped"}),
            node("no", data={"output": "held"}),
        ],
        [("start", "ask"), ("ask", "yes", "approved"), ("ask", "no", "rejected")],
        name=name,
    )


async def listed(base: str, who: str, run_id: str) -> list[dict]:
    async with as_(base, who) as http:
        answer = await http.get("/api/approvals")
        assert answer.status_code == 200, answer.text
        return [a for a in answer.json() if a["execution_id"] == run_id]


async def pending_for(base: str, who: str, run_id: str) -> dict:
    found = await eventually(lambda: listed(base, who, run_id), timeout=120, what=f"an approval pending for {who}")
    assert len(found) == 1, found
    return found[0]


async def test_two_of_three_by_user_and_group_with_refusals(stack):
    base = stack
    async with as_(base, "olivia") as olivia:
        group = await olivia.post("/api/groups", json={"name": "reviewers", "members": ["bob", "carol"]})
        assert group.status_code == 201, group.text
        assert (await olivia.post("/api/groups", json={"name": "reviewers", "members": []})).status_code == 409
        bad = await olivia.post("/api/groups", json={"name": "bad name!", "members": []})
        assert bad.status_code == 422 and bad.json()["issues"][0]["field"].endswith("name"), bad.text
        saved = await save(
            olivia,
            gate(
                f"two-of-three-{uuid.uuid4().hex[:6]}",
                approvers={"users": ["alice", "olivia"], "groups": ["reviewers"]},
                required=2,
                allow_self_approval=False,
            ),
        )
        run_id = await execute(olivia, saved["id"])

    pending = await pending_for(base, "bob", run_id)
    assert pending["required"] == 2 and pending["approvals"] == 0 and pending["decisions"] == []
    assert pending["awaiting"] == ["alice", "bob", "carol"], pending  # olivia started it: not awaited
    assert pending["owner"] == "olivia" and pending["node_id"] == "ask"
    approval = pending["id"]
    decide = f"/api/approvals/{approval}/decide"
    # Dave is no approver: he sees nothing and may decide nothing.
    assert await listed(base, "dave", run_id) == []
    async with as_(base, "dave") as dave:
        refused = await dave.post(decide, json={"approved": True})
        assert refused.status_code == 403 and "not an approver" in refused.json()["detail"], refused.text
    # Olivia is named but started the run, and self-approval is off; the owner's older route
    # does not go around it either.
    assert await listed(base, "olivia", run_id) == []
    async with as_(base, "olivia") as olivia:
        refused = await olivia.post(decide, json={"approved": True})
        assert refused.status_code == 403 and "self-approval" in refused.json()["detail"], refused.text
        old = await olivia.post(
            f"/api/executions/{run_id}/resume", json={"node_id": "ask", "input": {"approved": True}}
        )
        assert old.status_code == 409 and "/api/approvals/" in old.json()["detail"], old.text
    async with as_(base, "bob") as bob:
        wrong = await bob.post(decide, json={"approved": True, "input": {"note": 3}})
        assert wrong.status_code == 422 and wrong.json()["issues"][0]["field"] == "input.note", wrong.text
        first = await bob.post(decide, json={"approved": True, "input": {"note": "fine by me"}})
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "waiting" and first.json()["approvals"] == 1
        again = await bob.post(decide, json={"approved": True})
        assert again.status_code == 409 and "already decided" in again.json()["detail"], again.text
    assert await listed(base, "bob", run_id) == []  # decided: no longer his to decide
    carols = await pending_for(base, "carol", run_id)
    assert [d["by"] for d in carols["decisions"]] == ["bob"] and carols["awaiting"] == ["alice", "carol"]
    async with as_(base, "carol") as carol:
        second = await carol.post(decide, json={"approved": True, "input": {"note": "ship"}})
        assert second.status_code == 200 and second.json()["status"] == "approved", second.text
    async with as_(base, "olivia") as olivia:
        result = await wait_final(olivia, run_id, timeout=120)
    assert result["status"] == "completed", result
    nodes = result["nodes"]
    assert nodes["yes"]["status"] == "completed" and nodes["no"]["status"] == "skipped", nodes
    output = nodes["ask"]["output"]
    assert output["approved"] is True and output["decided_by"] == "carol" and output["input"] == {"note": "ship"}
    assert [(d["by"], d["approved"], d["input"]) for d in output["decisions"]] == [
        ("bob", True, {"note": "fine by me"}),
        ("carol", True, {"note": "ship"}),
    ]
    assert await listed(base, "alice", run_id) == []  # decided: nobody is asked any more
    async with as_(base, "alice") as alice:
        late = await alice.post(decide, json={"approved": True})
        assert late.status_code == 404, late.text


async def test_the_first_rejection_rejects(stack):
    base = stack
    async with as_(base, "olivia") as olivia:
        saved = await save(
            olivia, gate(f"rejected-{uuid.uuid4().hex[:6]}", approvers=["alice", "bob", "carol"], required=2)
        )
        run_id = await execute(olivia, saved["id"])
    pending = await pending_for(base, "alice", run_id)
    async with as_(base, "alice") as alice:
        answer = await alice.post(f"/api/approvals/{pending['id']}/decide", json={"approved": False})
        assert answer.status_code == 200 and answer.json()["status"] == "rejected", answer.text
    async with as_(base, "olivia") as olivia:
        result = await wait_final(olivia, run_id, timeout=120)
        audit = (await olivia.get("/api/audit", params={"action": "approval.decide"})).json()
    # The run's owner finds the decision under the run's execution id (not its flow run's).
    decided = {e["target_id"] for e in audit if e["action"] == "approval.decide" and e["actor"] == "alice"}
    assert run_id in decided and result["flow_run_id"] not in decided, (run_id, result["flow_run_id"], decided)
    nodes = result["nodes"]
    assert nodes["no"]["status"] == "completed" and nodes["yes"]["status"] == "skipped", nodes
    assert nodes["ask"]["output"]["approved"] is False and nodes["ask"]["output"]["decided_by"] == "alice"
    assert [d["by"] for d in nodes["ask"]["output"]["decisions"]] == ["alice"]


async def test_groups_are_the_owners_and_crud(stack):
    base = stack
    async with as_(base, "alice") as alice, as_(base, "bob") as bob:
        made = await alice.post("/api/groups", json={"name": "ops", "members": ["bob", "bob", "carol"]})
        assert made.status_code == 201 and made.json()["members"] == ["bob", "carol"], made.text
        group_id = made.json()["id"]
        assert (await bob.get(f"/api/groups/{group_id}")).status_code == 404
        assert group_id not in (await bob.get("/api/groups")).text
        changed = await alice.put(f"/api/groups/{group_id}", json={"name": "ops", "members": ["dave"]})
        assert changed.status_code == 200 and changed.json()["members"] == ["dave"], changed.text
        assert (await alice.get(f"/api/groups/{group_id}")).json()["members"] == ["dave"]
        assert (await alice.delete(f"/api/groups/{group_id}")).status_code == 204
        assert (await alice.get(f"/api/groups/{group_id}")).status_code == 404


# --- notices: the request, reminders and the escalation, by webhook and email -----------------


class Inbox:
    """What the local webhook server and the local SMTP server received."""

    def __init__(self) -> None:
        self.hooks: list[tuple[dict[str, str], bytes]] = []
        self.mails: list[EmailMessage] = []


@pytest.fixture(scope="module")
def inbox():
    received = Inbox()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.hooks.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    class Mail:
        async def handle_DATA(self, server, session, envelope):
            received.mails.append(message_from_bytes(envelope.content, policy=email_policy))
            return "250 OK"

    hooks = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    smtp = Controller(Mail(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    received.hook_url = f"http://127.0.0.1:{hooks.server_address[1]}/slack"
    received.smtp_url = f"smtp://127.0.0.1:{smtp.port}"
    yield received
    smtp.stop()
    hooks.shutdown()


HOOK_SECRET = "hook-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect, inbox):
    """The API (sending notices to the local servers, looking for due ones twice a second)
    and one worker."""
    home = tmp_path_factory.mktemp("org-approvals")
    keys = ",".join(f"{name}:{key}" for name, key in KEYS.items())
    port = free_port()
    with postgres_database("fm_store") as database_url:
        env = stack_env(
            home,
            pg_prefect,
            database_url,
            KEYS["olivia"],
            FLOWMAESTRO_API_KEYS=keys,
            FLOWMAESTRO_SMTP_URL=inbox.smtp_url,
            FLOWMAESTRO_APPROVAL_WEBHOOK_SECRET=HOOK_SECRET,
            FLOWMAESTRO_APPROVAL_NOTIFY_POLL_S="0.5",
            FLOWMAESTRO_PUBLIC_URL=f"http://127.0.0.1:{port}",
        )
        api, base = start_serve(home, env, workers=0, port=port)
        worker = start_worker(home, env, name=f"org-{uuid.uuid4().hex[:4]}")
        yield base
        worker.stop()
        api.stop()


def hook_notices(inbox: Inbox, run_id: str) -> list[dict]:
    found = []
    for headers, body in list(inbox.hooks):
        payload = json.loads(body)
        if payload["flowmaestro"]["execution_id"] != run_id:
            continue
        timestamp = headers["x-flowmaestro-timestamp"]
        assert headers["x-flowmaestro-signature"] == sign(HOOK_SECRET, timestamp, body)  # signed as webhooks are
        found.append(payload)
    return found


def mails_of(inbox: Inbox, run_id: str) -> list[EmailMessage]:
    return [m for m in list(inbox.mails) if run_id in m["Subject"]]


async def test_reminders_and_escalation_by_webhook_and_email_then_a_decision_through_the_emailed_link(stack, inbox):
    require_chromium()
    from playwright.async_api import async_playwright

    base = stack
    async with as_(base, "olivia") as olivia:
        saved = await save(
            olivia,
            gate(
                f"noticed-{uuid.uuid4().hex[:6]}",
                approvers=["alice"],
                remind_every_s=2,
                escalate_after_s=5,
                escalate_to={"users": ["carol"]},
                notify=[{"type": "webhook", "url": inbox.hook_url}, {"type": "email", "to": "team@example.com"}],
            ),
        )
        run_id = await execute(olivia, saved["id"])

    async def escalated():
        hooks, mails = hook_notices(inbox, run_id), mails_of(inbox, run_id)
        kinds = [h["flowmaestro"]["kind"] for h in hooks]
        return (hooks, mails) if "escalate" in kinds and any("escalated" in m["Subject"] for m in mails) else None

    hooks, mails = await eventually(escalated, timeout=90, what="the escalation notices")
    kinds = [h["flowmaestro"]["kind"] for h in hooks]
    assert kinds[0] == "request" and "reminder" in kinds, kinds
    assert kinds.index("escalate") > kinds.index("reminder"), kinds
    notices = [h["flowmaestro"]["notice"] for h in hooks]
    assert len(notices) == len(set(notices)), notices  # each notice once, whatever the poll
    assert hooks[0]["flowmaestro"]["awaiting"] == ["alice"] and "text" in hooks[0] and hooks[0]["blocks"]
    escalation = next(h for h in hooks if h["flowmaestro"]["kind"] == "escalate")
    assert escalation["flowmaestro"]["awaiting"] == ["alice", "carol"], escalation
    assert [m["To"] for m in mails] == ["team@example.com"] * len(mails)
    mail = next(m for m in mails if "escalated" in m["Subject"])
    text = mail.get_content()
    link = next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("carol: "))
    assert link.startswith(f"{base}/ui/decide#"), link

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await (await browser.new_context()).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(link)
            await page.wait_for_selector('body[data-link-state="open"]', timeout=30_000)
            assert "Deciding as carol" in await page.text_content('[data-role="decide-as"]')
            await page.fill("#field-note", "escalated and fine")
            await page.click('[data-role="approve"]')
            await page.wait_for_selector('body[data-link-state="approved"]', timeout=30_000)
            # The link decided once: opened again, it is refused.
            again = await (await browser.new_context()).new_page()
            await again.goto(link)
            await again.wait_for_selector('body[data-link-state="refused"]', timeout=30_000)
            assert "used already" in await again.text_content('[data-role="decide-status"]')
            assert not errors, errors
        finally:
            await browser.close()
    async with as_(base, "olivia") as olivia:
        result = await wait_final(olivia, run_id, timeout=120)
    output = result["nodes"]["ask"]["output"]
    assert result["nodes"]["yes"]["status"] == "completed" and output["decided_by"] == "carol", output
    assert output["input"] == {"note": "escalated and fine"}
