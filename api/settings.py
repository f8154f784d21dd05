"""API settings, read once per process from ``FLOWMAESTRO_*`` environment variables and
injected into the app (tests build their own)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from builder.limits import CompileSettings
from store.settings import StoreSettings


class ApiSettings(StoreSettings, CompileSettings):
    api_keys: str = Field(
        "", description="Comma-separated bearer keys, each 'owner:key' or a bare key (then the key is its own owner)."
    )
    admin_key: SecretStr | None = Field(
        None,
        description="Bearer key of the key management routes (/api/admin/keys), which "
        "create and revoke owners' API keys; closed when unset.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser (a canvas frontend)."
    )
    max_request_bytes: int = Field(2_000_000, description="Largest request body accepted.")
    max_streams_per_run: int = Field(
        50,
        ge=1,
        description="Live event streams of one run one API process keeps "
        "open at once; more answer 429 with Retry-After.",
    )
    stream_end_check_s: float = Field(
        5.0,
        gt=0,
        description="How often an API process asks Prefect whether the runs its open streams "
        "follow have ended without their final event (one request for all of them).",
    )
    work_pool: str = Field(
        "flowmaestro", description="Prefect work pool of the workflows' deployments; workers poll it."
    )
    owner_max_runs: int | None = Field(
        10,
        ge=1,
        description="Runs of one owner in flight (pending or running) "
        "at once, across all workers: each owner's deployments use a work queue of "
        "their own (owner-<name>) with this concurrency limit, so their further runs "
        "wait in Prefect without taking a worker slot. Empty: no limit.",
    )
    node_test_wait_s: float = Field(
        60.0,
        ge=0,
        description="How long POST /api/workflows/{id}/nodes/{node_id}/test waits for its run "
        "to end before answering 202 with the run to follow.",
    )
    prefect_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Longest a request waits on the Prefect server (its client retries included) before answering 503.",
    )
    accept_max_waiting: int = Field(
        5000,
        ge=1,
        description="Most runs accepted whose Prefect flow run is not created yet, across "
        "every API process (docs/operations.md#accepting-runs): beyond it an execute answers "
        "503 naming Prefect, with Retry-After, and records nothing.",
    )
    accept_create_concurrency: int = Field(
        8,
        ge=1,
        description="Flow runs one API process creates at once for the runs it accepted.",
    )
    accept_scan_s: float = Field(
        3.0,
        gt=0,
        description="How often an API process looks for accepted runs with no flow run yet "
        "(left by an API that died, or due again after Prefect failed).",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Key ring that encrypts webhook secrets and stored credentials at "
        "rest: comma-separated keys (each a Fernet key, or any string to derive one "
        "from), the first encrypts, all decrypt ('flowmaestro secrets reseal' moves "
        "everything to the first); a key file under home (secret.key, mode 0600) is "
        "generated when unset.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL; when set, webhook rate limits are counted there "
        "(shared by every API process) instead of in each process.",
    )
    webhook_rate_limit: int = Field(
        60, ge=1, description="Requests a minute one webhook accepts before answering 429 with Retry-After."
    )
    webhook_refused_rate_limit: int = Field(
        30,
        ge=1,
        description="Webhook requests a minute that fail the "
        "signature check (or name no webhook), per webhook and per client "
        "address, before answering 429 with Retry-After.",
    )
    webhook_max_body_bytes: int = Field(1_048_576, ge=1, description="Largest webhook request body (413 above).")
    metrics_key: SecretStr | None = Field(
        None,
        description="Bearer key that GET /metrics needs (its labels "
        "name every owner's workflows); closed when unset, unless "
        "metrics_public.",
    )
    metrics_public: bool = Field(
        False,
        description="Open GET /metrics to anyone when no metrics key is set "
        "(a deliberate choice: it names every owner's workflows).",
    )
    prefect_public_url: str | None = Field(
        None,
        description="The Prefect UI's address as browsers reach it "
        "(e.g. behind an authenticating proxy); execute answers and the run "
        "pages link to runs there. Unset: no Prefect address is given out.",
    )
    stream_token_key: SecretStr | None = Field(
        None,
        description="Key that signs stream tokens (?token= on a "
        "run's stream, for browsers); derived from the secret key "
        "when unset. Every API process must have the same.",
    )
    decision_key: SecretStr | None = Field(
        None,
        description="Key that signs the approval decisions the API "
        "writes, which workers check; derived from the secret key when unset. "
        "Workers need the same (FLOWMAESTRO_DECISION_KEY).",
    )
    plan_cache_nodes: int = Field(
        50_000,
        ge=1,
        description="Plans of saved versions one API process keeps "
        "(least recently used dropped first), counted in nodes: execute, webhooks and "
        "schedules then do not compile a version again.",
    )
    stream_token_ttl_s: float = Field(
        600.0, gt=0, le=86_400, description="How long a stream token reads its run's stream."
    )
    # Approval notifications (docs/approvals.md): sent by the API processes, not the workers.
    public_url: str | None = Field(
        None,
        description="This API's address as browsers reach it, for the decision links of approval "
        "notifications (e.g. https://flows.example.com). Unset: links are relative paths.",
    )
    smtp_url: SecretStr | None = Field(
        None, description="smtp://[user:password@]host[:port], smtps://... or smtp+starttls://... for approval emails."
    )
    smtp_from: str = Field("flowmaestro@localhost", description="The From of approval emails.")
    approval_webhook_secret: SecretStr | None = Field(
        None,
        description="Signs approval notification webhooks (X-FlowMaestro-Signature, as webhooks are "
        "signed); unset: webhook notifications are not sent.",
    )
    approval_notify_poll_s: float = Field(
        10.0, gt=0, le=3600, description="How often an API process looks for approval notices due."
    )
    approval_link_ttl_s: float = Field(
        86_400.0, gt=0, description="How long a decision link works (not beyond its approval's timeout)."
    )
    http_allow_hosts: str = Field(
        "",
        description="As the workers': where approval notification webhooks may go beyond global addresses.",
    )

    @field_validator("owner_max_runs", mode="before")
    @classmethod
    def _no_limit(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)  # a JSON list, as pydantic-settings would read it
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def key_owners(self) -> dict[str, str]:
        """Key -> owner."""
        owners = {}
        for item in (part.strip() for part in self.api_keys.split(",")):
            if not item:
                continue
            owner, sep, key = item.partition(":")
            if not sep:
                key, owner = item, "key-" + hashlib.sha256(item.encode()).hexdigest()[:12]
            owners[key] = owner
        return owners
