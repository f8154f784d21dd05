"""Settings of the handlers that talk to the outside (http, llm, router), and secrets.

Settings are read from the environment (``FLOWMAESTRO_*``) by the entry point of a
process, which hands them on: to its ``HandlerServices`` (what nodes read at run time) and
to its handler registry (``build_registry``: the loop cap the compiler applies). Nothing
caches them for the process.

Secrets are different: a canvas never holds one. It names it (``token_secret: "GITHUB"``)
and the handler reads ``FLOWMAESTRO_SECRET_GITHUB`` from the environment when the node
runs, so rotating a secret needs no restart, and no template can ever read it. Each is
bound to owners and hosts (``node_handlers.operator_secrets``); every encoding of it is
redacted (``node_handlers.redaction``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from node_handlers.operator_secrets import SECRET_NAME_PATTERN
from store.settings import StoreSettings

SecretName = Annotated[
    str,
    Field(
        pattern=SECRET_NAME_PATTERN,
        description="Name of a secret: its value is "
        "read from the environment variable FLOWMAESTRO_SECRET_<NAME>, bound to owners "
        "and hosts (FLOWMAESTRO_SECRET_<NAME>_OWNERS, _HOSTS).",
    ),
]


class ModelPrice(BaseModel):
    input_per_1m: float = Field(ge=0, description="USD per million input (prompt) tokens.")
    output_per_1m: float = Field(ge=0, description="USD per million output (completion) tokens.")


class HandlerSettings(StoreSettings):
    """Extends ``StoreSettings`` for ``database_url``: like the other URLs of the
    installation below, it is read to refuse it to nodes (``node_handlers.protected``)."""

    model_config = SettingsConfigDict(env_prefix="FLOWMAESTRO_", extra="ignore", populate_by_name=True)

    http_allow_hosts: str = Field(
        "",
        description="What http and llm nodes may reach beyond globally routable "
        "addresses, comma-separated: host, host:port, network, network:port (IPv6 in "
        "brackets: [::1]:8080); '*' allows everything. This machine's own non-loopback "
        "addresses need an entry with a port. FlowMaestro's own services are refused "
        "whatever it says.",
    )
    # FlowMaestro's own services, refused to nodes whatever http_allow_hosts says.
    prefect_api_url: str | None = Field(
        None, validation_alias=AliasChoices("PREFECT_API_URL"), description="The Prefect API this process uses."
    )
    server_port: int = Field(4200, description="Port of the embedded Prefect server, when PREFECT_API_URL is unset.")
    # No default, unlike EngineSettings.public_url: 'flowmaestro run' has no API, and its
    # default port (8000) is vLLM's too.
    public_url: str | None = Field(
        None, description="The FlowMaestro API's URL, when set ('flowmaestro serve' sets it for its workers)."
    )
    api_bind: str | None = Field(
        None, description="host:port the FlowMaestro API listens on ('flowmaestro serve' sets it for its workers)."
    )
    redis_url: str | None = Field(None, description="Redis of the event log and rate limits.")
    cache_lock_redis_url: str | None = Field(None, description="Redis of the cache lock manager.")
    prefect_redis_messaging_url: str | None = Field(
        None,
        validation_alias=AliasChoices("PREFECT_REDIS_MESSAGING_URL"),
        description="Redis of Prefect's messaging, when this process sees it.",
    )
    prefect_database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL"),
        description="The Prefect server's database, when this process sees it.",
    )
    openai_base_url: str | None = Field(
        None,
        description="Default base URL of llm and router nodes (an OpenAI-compatible API); OpenAI's own when unset.",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FLOWMAESTRO_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="API key of llm and router nodes without their own api_key_secret "
        "(FLOWMAESTRO_OPENAI_API_KEY, else OPENAI_API_KEY).",
    )
    anthropic_base_url: str | None = Field(
        None, description="Default base URL of nodes with provider: anthropic; Anthropic's own when unset."
    )
    anthropic_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FLOWMAESTRO_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
        description="API key of nodes with provider: anthropic without their own api_key_secret "
        "(FLOWMAESTRO_ANTHROPIC_API_KEY, else ANTHROPIC_API_KEY); sent to anthropic_base_url only.",
    )
    default_model: str = Field("gpt-4o-mini", description="Model of llm and router nodes that name none.")
    max_loop_iterations: int = Field(
        10_000,
        ge=1,
        description="Most iterations one execution of a loop node "
        "runs, whatever its max_iterations says: a loop over more items fails the node "
        "(and a canvas whose loop count is known fails to compile), so one run cannot "
        "keep a shared worker busy for long.",
    )
    llm_prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="JSON mapping a model name to {input_per_1m, output_per_1m} in USD, to report cost_usd.",
    )
    code_sandbox: Literal["on", "off"] = Field(
        "on",
        description="'on': code nodes run in the OS sandbox (bubblewrap), and fail saying why where it "
        "cannot be set up. 'off' runs them as plain processes of the worker's user, with its files and "
        "network: UNSAFE, for a machine whose every canvas is trusted; the worker warns at start.",
    )
    code_bwrap: str = Field("bwrap", description="The bubblewrap executable of code nodes' sandbox.")
    code_python: str = Field("/usr/bin/python3", description="The Python interpreter of code nodes.")
    code_node: str = Field("/usr/bin/node", description="The Node.js executable of code nodes (JavaScript).")
    code_python_paths: str = Field(
        "",
        description="Directories of Python packages the operator allows in code nodes, comma-separated: "
        "mounted read-only in the sandbox and put on sys.path.",
    )
    code_node_paths: str = Field(
        "",
        description="Directories of node_modules the operator allows in JavaScript code nodes, "
        "comma-separated: mounted read-only in the sandbox and put on NODE_PATH.",
    )
    code_max_timeout_s: float = Field(60.0, gt=0, description="Largest timeout_s a code node may ask for.")
    code_max_memory_mb: int = Field(1024, ge=16, description="Largest memory_mb a code node may ask for.")
    code_max_output_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Most bytes a code node may print, and most bytes of its JSON result: past it the node "
        "fails with type output_limit.",
    )
    code_max_processes: int = Field(
        32, ge=4, description="Most processes and threads at once in one code node's sandbox (Node.js uses ~12)."
    )
    code_warm_pool: int = Field(
        2,
        ge=0,
        le=64,
        description="Sandboxes per language each worker process keeps started ahead, each for one "
        "execution (JavaScript: for nodes with the default memory_mb); 0: one started per execution.",
    )
    code_scratch_mb: int = Field(16, ge=1, description="Size of a code node's scratch directory (/tmp).")
    code_sandbox_uid: int = Field(
        65534,
        ge=1,
        description="The user id code nodes run as when the worker runs as root (the kernel exempts root "
        "from the process limit).",
    )
