"""Engine settings, from the environment (``FLOWMAESTRO_*``).

Built once per process by its entry point (the CLI, the API, the deployment entry point
``flows.flow.run_workflow``) and handed to runs in their ``RunContext``; nothing reads
them behind a caller's back.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from builder.limits import CompileSettings
from builder.templates import TemplateLimits
from store.settings import StoreSettings


class EngineSettings(StoreSettings, CompileSettings):
    server_port: int = Field(
        4200, description="Port of the embedded Prefect server (a free one is chosen if it is taken by something else)."
    )
    env_allowlist: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), description="Environment variables templates may read as env.NAME (comma-separated)."
    )
    inline_control_nodes: bool = Field(
        True,
        description="Run control nodes (start/end/condition/merge/transform/"
        "set_variable) and inline-safe ones (delay, plugins that say so) in the flow "
        "run and record them in Prefect by events, instead of full task runs.",
    )
    max_task_runs: int = Field(
        10_000,
        ge=0,
        description="How many task runs a run shows in Prefect one by one; "
        "beyond that, container bodies' inline nodes are shown as one summary task run per "
        "body node and container execution (Prefect's run graph draws at most 10,000).",
    )
    event_output_max_bytes: int = Field(
        262_144,
        ge=1024,
        description="A node output larger than this (as JSON) is "
        "kept in the store (runs of saved workflows): its event, and the run result for "
        "a top-level node, carry its size, a preview and a reference to read it "
        "(GET /api/executions/{id}/outputs/{ref}).",
    )
    template_max_steps: int = Field(
        1_000_000,
        ge=1000,
        description="The CPU budget of one node's templates "
        "(all the strings of its configuration) or one condition: loop iterations, calls, "
        "filters and operators, plus one step per 16 characters built (about 0.2-0.5 s "
        "when spent). A render over it fails its node with a message naming the limit.",
    )
    template_max_chars: int = Field(
        1_000_000,
        ge=1000,
        description="The longest string or list a template may "
        "build, and the longest text it may render; refused before it is allocated.",
    )
    max_node_output_bytes: int = Field(
        16_000_000,
        ge=1024,
        description="A node output larger than this (as JSON) fails the node before it is journaled, kept or shown.",
    )
    plan_cache_nodes: int = Field(
        50_000,
        ge=1,
        description="Plans of saved versions a worker keeps compiled, "
        "by (workflow, version), counted in nodes: each version is compiled once.",
    )
    node_logs: bool = Field(
        True,
        description="Every node that ends writes a line (status, duration, attempts, "
        "HTTP status, tokens and cost) to its flow run's Prefect logs.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="The FlowMaestro API's URL as browsers reach "
        "it: the run summary in the Prefect UI links to the run page there ('flowmaestro "
        "serve' sets it for its workers).",
    )
    node_execution_retention_days: float | None = Field(
        None,
        gt=0,
        description="Node executions (GET /api/executions/{id}/nodes: inputs, outputs, "
        "logs) recorded longer ago than this are deleted by workers (at most hourly); unset: "
        "kept as long as the run's record.",
    )
    cancel_poll_s: float = Field(1.0, gt=0, description="How often a run checks whether it was cancelled.")
    max_subworkflow_depth: int = Field(
        10, ge=1, description="How deep sub-workflows may nest; a child deeper than this fails its subworkflow node."
    )
    crash_retries: int = Field(
        3,
        ge=0,
        description="How many times a run whose worker died is continued (by any worker) before it ends failed.",
    )
    crash_detect_s: float = Field(
        90.0,
        ge=15,
        description="A run whose worker sends no heartbeat for this long "
        "is marked Crashed and rescheduled (Prefect automations; workers beat every "
        "third of it).",
    )
    approval_hold_s: float | None = Field(
        300.0,
        ge=0,
        description="How long a worker holds a run paused on an "
        "approval (a fast resume) before releasing it (Prefect suspend: waiting "
        "costs no process; an answer schedules it again). 'never' (or empty): "
        "hold until answered. An approval with a timeout_s is released until its timeout.",
    )
    delay_release_s: float | None = Field(
        60.0,
        ge=0,
        description="A delay in a run of a saved workflow that "
        "still has longer than this to wait (and longer than the workers' "
        "prefetch, 10 s) lets go of its worker slot: the run is suspended and "
        "scheduled again for shortly before the delay's end, when any worker continues it. "
        "'never' (or empty): delays wait in their worker.",
    )
    approval_prefect_ui: bool = Field(
        True,
        description="Whether approvals take answers given through Prefect "
        "(its UI's Resume form, its API): unverified, they are recorded as via "
        "'prefect-ui' without decided_by. false: only decisions FlowMaestro's API "
        "or CLI signed are taken (docs/operations.md#approvals).",
    )
    decision_key: SecretStr | None = Field(
        None,
        description="Key that signs approval decisions (the API, the "
        "CLI) and checks them (workers); derived from secret_key when unset. "
        "Every API process and worker needs the same; 'flowmaestro serve' "
        "passes it to its workers.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="The API's key ring that encrypts webhook secrets: only to derive "
        "decision_key and credentials_key from when those are unset (a key file under "
        "home when all are).",
    )
    credentials_key: SecretStr | None = Field(
        None,
        description="The key ring that opens stored credentials, derived from the "
        "API's secret_key ('flowmaestro serve' passes it to its workers; 'flowmaestro "
        "secrets worker-key' prints it); derived from secret_key when unset.",
    )
    cache_lock_redis_url: str | None = Field(
        None,
        description="Redis URL of the lock manager that makes two runs "
        "needing the same cached node execute it once (Prefect's SERIALIZABLE "
        "cache isolation) across machines; unset, lock files under home do "
        "it for the processes of one machine.",
    )

    @property
    def template_limits(self) -> TemplateLimits:
        return TemplateLimits(max_steps=self.template_max_steps, max_chars=self.template_max_chars)

    @field_validator("approval_hold_s", "delay_release_s", mode="before")
    @classmethod
    def _never(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "never", "none") else value

    @field_validator("env_allowlist", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(v.strip() for v in value.split(",") if v.strip())
        return value
