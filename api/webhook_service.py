"""Webhooks: signed requests from elsewhere that start runs of a workflow.

Prefect's webhooks are Prefect Cloud's; this intake is FlowMaestro's, and every run it
starts goes through ``RunService.start`` like ``POST /execute``: the inputs are checked
against the latest version, the run is a flow run of the workflow's deployment, and the
execution records ``trigger: {"type": "webhook", "webhook_id": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from api.errors import ApiError
from api.rate_limit import RateLimiter, retry_after
from api.replay_guard import ReplayGuard
from api.runs import RunService
from api.schemas import RunResult
from api.signing import BadSignature
from api.webhook_schemes import InputMapping, Verification, map_inputs, stored_verification, verify_request
from store.errors import Invalid, NotFound, Unavailable
from store.queries import FINAL_STATUSES
from store.triggers import Webhook, Webhooks

IDEMPOTENCY_WINDOW = timedelta(hours=24)
WAIT_POLL_S = 0.25


@dataclass(frozen=True)
class Delivery:
    execution_id: str
    replayed: bool = False
    """True when an earlier request with the same Idempotency-Key started the run."""
    result: RunResult | None = None
    """The run result when the request asked to wait and the run ended meanwhile."""


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def started_nothing(error: Exception) -> bool:
    """Whether a delivery that failed with ``error`` surely started no run: refused (429, 4xx)
    or stopped by our own store or Redis. Prefect not answering in time is not sure (it may
    have created the run), nor is a cancelled request (not an ``Exception``): their signature
    stays used, and the sender signs a retry anew or sends an Idempotency-Key."""
    return not (isinstance(error, Unavailable) and error.service == "prefect")


class WebhookService:
    def __init__(
        self,
        runs: RunService,
        webhooks: Webhooks,
        limiter: RateLimiter,
        replays: ReplayGuard,
        refused_limiter: RateLimiter | None = None,
    ):
        """``limiter``: signed requests a minute per hook. ``replays``: the signatures already
        used in their window. ``refused_limiter``: requests that fail the signature check (or
        name no hook) a minute, per hook and per client address, answered 429 past it, so
        nobody floods the intake with unsigned requests."""
        self.runs, self.webhooks, self.limiter, self.replays = runs, webhooks, limiter, replays
        self.refused_limiter = refused_limiter

    async def create(
        self,
        owner: str,
        workflow_id: str,
        name: str,
        *,
        verification: Verification | None = None,
        inputs: InputMapping | None = None,
        secret: str | None = None,
    ) -> Webhook:
        """``secret``: the sender's own (Stripe's and Slack's give theirs), else a new one."""
        await self.runs.workflows.get(owner, workflow_id)  # 404 for another owner's workflow
        return await self.webhooks.create(
            owner,
            workflow_id,
            name,
            secret or new_secret(),
            verification=verification.model_dump() if verification else None,
            inputs_map=inputs.model_dump() if inputs else None,
            actor=owner,
        )

    async def list(self, owner: str, workflow_id: str) -> list[Webhook]:
        await self.runs.workflows.get(owner, workflow_id)
        return await self.webhooks.list(owner, workflow_id)

    async def rotate(self, owner: str, workflow_id: str, hook_id: str, secret: str | None = None) -> Webhook:
        return await self.webhooks.rotate(owner, workflow_id, hook_id, secret or new_secret(), actor=owner)

    async def delete(self, owner: str, workflow_id: str, hook_id: str) -> None:
        await self.webhooks.delete(owner, workflow_id, hook_id, actor=owner)

    async def deliver(
        self,
        hook_id: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        query: Mapping[str, str],
        idempotency_key: str | None,
        wait_s: float | None,
        client: str = "unknown",
    ) -> Delivery:
        """Check, count, start (or find the run of an earlier request with the same key).
        ``headers``: the request's, case-insensitive; ``query``: its parameters but ours
        (``wait``). ``client``: the requesting address, whose refused requests are counted."""
        try:
            hook = await self.webhooks.for_delivery(hook_id)
        except ValueError as exc:  # encrypted under another key: the operator must fix it
            raise Unavailable("secret-key", str(exc)) from exc
        except NotFound:
            await self._count_refused(f"client:{client}")
            raise
        assert hook.secret is not None
        verification = stored_verification(hook.verification)
        try:
            verified = verify_request(verification, hook.secret, headers, body, now=time.time())
        except BadSignature as exc:
            await self._count_refused(f"hook:{hook.id}", f"client:{client}")
            raise ApiError(401, f"invalid webhook signature: {exc}") from None
        signature = verified.signature
        idempotency_key = idempotency_key or verified.delivery_id
        if idempotency_key and len(idempotency_key) > 200:
            raise Invalid(
                "the idempotency key is longer than 200 characters",
                [{"code": "invalid_request", "field": "Idempotency-Key", "message": "at most 200 characters"}],
            )
        mapping = InputMapping.model_validate(hook.inputs_map) if hook.inputs_map is not None else None
        inputs, problem = map_inputs(mapping, body, headers.get("content-type"), headers, query)
        if idempotency_key:
            # A retry of a delivered request (the same signed request, the same key) is
            # answered with its run, as before: it starts nothing.
            earlier = await self.webhooks.delivered(hook.id, idempotency_key, IDEMPOTENCY_WINDOW)
            if earlier is not None:
                if isinstance(inputs, dict):  # the key reused for another request: 422
                    await self.runs.refuse_other_request(hook.owner, earlier, inputs, None)
                return Delivery(earlier, replayed=True)
        # Any other copy of a signed request is a replay: refused, whatever unsigned headers
        # (an Idempotency-Key) it carries, and before the rate limit so replays use none of
        # the hook's budget.
        try:
            first = await self.replays.first_use(hook.id, signature)
        except Exception as exc:  # Redis down or unreachable
            raise Unavailable(
                "redis", f"the webhook replay guard's Redis did not answer ({type(exc).__name__})"
            ) from exc
        if not first:
            raise ApiError(
                409, "this signed request was already delivered (a replay); sign each request with its own timestamp"
            )
        try:
            run_id, replayed = await self._start(hook, inputs, problem, idempotency_key)
        except Exception as exc:
            if started_nothing(exc):  # the sender may send the very same request again
                with contextlib.suppress(Exception):  # the original error is the answer
                    await self.replays.forget(hook.id, signature)
            raise
        if replayed:
            return Delivery(run_id, replayed=True)
        result = await self._wait(hook.owner, run_id, wait_s) if wait_s else None
        return Delivery(run_id, result=result)

    async def _start(
        self, hook: Webhook, inputs: Any, problem: str | None, idempotency_key: str | None
    ) -> tuple[str, bool]:
        """Count the request, check its inputs, start its run: (run id, whether an earlier
        request with the same key, at the same moment, started it). ``problem``: why the
        request gave no inputs."""
        # Signed requests have their own budget: unsigned ones cannot use it up.
        await self._limit(self.limiter, hook.id, "webhook rate limit reached")
        if problem is not None or not isinstance(inputs, dict):
            raise Invalid(
                problem or "the request body must be a JSON object of the workflow's inputs",
                [{"code": "invalid_request", "field": "body", "message": "expected a JSON object"}],
            )
        # Hook-scoped, and scoped to the day: past the 24 h window the same key starts a
        # new run, which Prefect's flow-run idempotency (forever) would otherwise refuse.
        day = int(time.time() // 86_400)
        key = f"webhook:{hook.id}:{idempotency_key}:{day}" if idempotency_key else None
        run_id = await self.runs.start(
            owner=hook.owner,
            workflow_id=hook.workflow_id,
            version=None,
            inputs=inputs,
            trigger={"type": "webhook", "webhook_id": hook.id},
            idempotency_key=key,
        )
        if idempotency_key:
            first = await self.webhooks.record_delivery(hook.id, idempotency_key, run_id)
            if first != run_id:
                return first, True
        return run_id, False

    async def _count_refused(self, *keys: str) -> None:
        """Count a refused request against each key: 429 once one has had its minute's worth."""
        if self.refused_limiter is None:
            return
        for key in keys:
            await self._limit(self.refused_limiter, key, "too many unsigned or wrongly signed webhook requests")

    @staticmethod
    async def _limit(limiter: RateLimiter, key: str, what: str) -> None:
        try:
            wait = await limiter.hit(key)
        except Exception as exc:  # Redis down or unreachable
            raise Unavailable("redis", f"the rate limiter's Redis did not answer ({type(exc).__name__})") from exc
        if wait is not None:
            raise ApiError(429, f"{what}; retry in {retry_after(wait)} s", headers={"Retry-After": retry_after(wait)})

    async def _wait(self, owner: str, run_id: str, wait_s: float) -> RunResult | None:
        deadline = time.monotonic() + wait_s
        while True:
            result = await self.runs.read(owner, run_id)
            if result.status in FINAL_STATUSES:
                return result
            if time.monotonic() + WAIT_POLL_S > deadline:
                return None
            await asyncio.sleep(WAIT_POLL_S)
