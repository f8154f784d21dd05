"""Approval notices: the request, reminders and the escalation of approvals that ask for
them (``notify``, ``remind_every_s``, ``escalate_after_s``), by signed webhook and by email,
each with a decision link per person awaited.

The timer runs in every API process (``run``), not in the workers: a run released by its
worker (suspended, or scheduled for its timeout) has no process, and its reminders must go
on. Every ``poll_s`` it reads the waiting approvals (``ApprovalDesk.waiting``), works out
which notices are due from when each was asked (``due_notices``: the request, the latest
reminder, the escalation), and sends each one whose row it claims first
(``store.approval_notices``): of several API processes, one sends. A notice is claimed before
it is sent: a process that dies in between loses that one notice, never sends it twice.
Missed reminders are not sent in a burst: only the latest one due is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import smtplib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import httpx

from api.approval_desk import ApprovalDesk, approval_id
from api.approval_links import LinkSigner
from api.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from node_handlers.egress import EgressPolicy, check_url, make_policy
from store.approval_notices import ApprovalNotices

if TYPE_CHECKING:
    from fastapi import FastAPI

    from api.settings import ApiSettings

log = logging.getLogger("flowmaestro.approvals.notices")


@dataclass(frozen=True)
class NoticeSettings:
    poll_s: float
    link_ttl_s: float
    public_url: str
    smtp_url: str | None
    smtp_from: str
    webhook_secret: str | None


def due_notices(record: dict[str, Any], now: datetime) -> list[str]:
    """The notices of an approval due at ``now``: ``request``, ``remind-<k>`` (the latest),
    ``escalate``."""
    asked = datetime.fromisoformat(record["requested_at"])
    age = (now - asked).total_seconds()
    due = ["request"]
    every = record.get("remind_every_s")
    if every and age >= float(every):
        due.append(f"remind-{int(age // float(every))}")
    after = record.get("escalate_after_s")
    if after and age >= float(after):
        due.append("escalate")
    return due


def send_mail(url: str, sender: str, to: list[str], subject: str, text: str) -> None:
    """One email through the SMTP server of ``url`` (blocking: called in a thread)."""
    parts = urlsplit(url)
    ssl = parts.scheme == "smtps"
    port = parts.port or (465 if ssl else 25)
    client = smtplib.SMTP_SSL if ssl else smtplib.SMTP
    with client(parts.hostname or "localhost", port, timeout=15) as smtp:
        if parts.scheme == "smtp+starttls":
            smtp.starttls()
        if parts.username:
            smtp.login(unquote(parts.username), unquote(parts.password or ""))
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = sender, ", ".join(to), subject
        message.set_content(text)
        smtp.send_message(message)


class ApprovalNotifier:
    def __init__(
        self,
        desk: ApprovalDesk,
        notices: ApprovalNotices,
        links: LinkSigner,
        settings: NoticeSettings,
        egress: EgressPolicy,
        http: httpx.AsyncClient,
    ):
        self.desk, self.notices, self.links, self.settings = desk, notices, links, settings
        self.egress, self.http = egress, http

    async def run(self) -> None:
        """Look for due notices every ``poll_s`` until cancelled; a failure (Prefect or the
        database down) is logged and the next round tries again."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("approval notices: this round failed (%s); trying again", exc)
            await asyncio.sleep(self.settings.poll_s)

    async def tick(self) -> int:
        """One round; how many notices it sent."""
        sent = 0
        now = datetime.now(UTC)
        for run_id, owner, record in await self.desk.waiting():
            if not record.get("notify"):
                continue
            approval = approval_id(run_id, record["slug"])
            for notice in due_notices(record, now):
                if await self.notices.claim(approval, notice):
                    await self.send(run_id, owner, record, notice)
                    sent += 1
        return sent

    def _link(self, approval: str, identity: str, record: dict[str, Any]) -> str:
        ttl = self.settings.link_ttl_s
        if record.get("timeout_at"):  # a link is no use past the approval's timeout
            left = (datetime.fromisoformat(record["timeout_at"]) - datetime.now(UTC)).total_seconds()
            ttl = max(1.0, min(ttl, left))
        token = self.links.issue(approval, identity, ttl)
        return f"{self.settings.public_url}/ui/decide#{token}"

    async def send(self, run_id: str, owner: str, record: dict[str, Any], notice: str) -> None:
        approval = approval_id(run_id, record["slug"])  # ``run_id``: the flow run, where approvals live
        execution_id = str(record.get("execution_id", run_id))  # what the owner knows the run by
        deciders = await self.desk.deciders(owner, record)
        votes = (await self.desk.votes.of([approval])).get(approval, [])
        awaiting = deciders.awaiting(votes)
        links = {identity: self._link(approval, identity, record) for identity in awaiting}
        kind = "reminder" if notice.startswith("remind-") else notice
        what = {"request": "waits for a decision", "reminder": "still waits", "escalate": "is escalated"}[kind]
        head = f"Approval {record['node_id']} of run {execution_id} ({owner}) {what}"
        lines = [head + (f": {record['message']}" if record.get("message") else "")]
        lines.append(f"{sum(1 for v in votes if v.approved)} of {record.get('required') or 1} approvals so far.")
        lines += [f"{identity}: {link}" for identity, link in links.items()]
        text = "\n".join(lines)
        details = {
            "kind": kind,
            "notice": notice,
            "approval_id": approval,
            "execution_id": execution_id,
            "node_id": record["node_id"],
            "awaiting": awaiting,
            "links": links,
        }
        for target in record.get("notify") or []:
            try:
                if target.get("type") == "webhook":
                    await self._webhook(target["url"], text, details)
                elif target.get("type") == "email":
                    await self._email(list(target["to"]), head, text)
            except Exception as exc:  # one channel failing does not stop the others
                # Never the text: it holds the decision links.
                log.warning("approval %s: %s notice by %s not sent: %s", approval, notice, target.get("type"), exc)

    async def _webhook(self, url: str, text: str, details: dict[str, Any]) -> None:
        if not self.settings.webhook_secret:
            raise RuntimeError("FLOWMAESTRO_APPROVAL_WEBHOOK_SECRET is not set: webhooks are not sent unsigned")
        await check_url(url, self.egress)
        # Slack's incoming webhooks read ``text`` (and ``blocks``) and ignore the rest.
        body = json.dumps(
            {
                "text": text,
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                "flowmaestro": details,
            }
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.settings.webhook_secret, timestamp, body),
        }
        answer = await self.http.post(url, content=body, headers=headers)
        answer.raise_for_status()

    async def _email(self, to: list[str], subject: str, text: str) -> None:
        if not self.settings.smtp_url:
            raise RuntimeError("FLOWMAESTRO_SMTP_URL is not set")
        await asyncio.to_thread(send_mail, self.settings.smtp_url, self.settings.smtp_from, to, subject, text)


@contextlib.asynccontextmanager
async def run_approval_notifier(app: FastAPI, settings: ApiSettings) -> AsyncIterator[ApprovalNotifier]:
    """The notifier of an API process, running in the background while the app serves."""
    notice_settings = NoticeSettings(
        poll_s=settings.approval_notify_poll_s,
        link_ttl_s=settings.approval_link_ttl_s,
        public_url=(settings.public_url or "").rstrip("/"),
        smtp_url=settings.smtp_url.get_secret_value() if settings.smtp_url else None,
        smtp_from=settings.smtp_from,
        webhook_secret=(
            settings.approval_webhook_secret.get_secret_value() if settings.approval_webhook_secret else None
        ),
    )
    egress = await asyncio.to_thread(make_policy, settings.http_allow_hosts, ())
    async with httpx.AsyncClient(timeout=15, follow_redirects=False) as http:
        notifier = ApprovalNotifier(
            app.state.approval_desk, app.state.approval_notices, app.state.approval_links, notice_settings, egress, http
        )
        task = asyncio.create_task(notifier.run(), name="approval notices")
        try:
            yield notifier
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
