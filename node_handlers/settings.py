"""Settings of the handlers that talk to the outside (http, llm, router), and secrets.

Settings are read once per process from the environment (``FLOWMAESTRO_*``) through
``handler_settings()``; tests change the environment and call ``reset_handler_settings()``.

Secrets are different: a canvas never holds one. It names it (``token_secret: "GITHUB"``)
and the handler reads ``FLOWMAESTRO_SECRET_GITHUB`` from the environment when the node
runs, so rotating a secret needs no restart, and no template can ever read it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from node_handlers.base import NodeError

SECRET_ENV_PREFIX = "FLOWMAESTRO_SECRET_"
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
"""Letters, digits and underscores: a name, never a template, so no secret passes through one."""
REDACTED = "[redacted]"
SecretName = Annotated[str, Field(pattern=SECRET_NAME_PATTERN, description="Name of a secret: its value is "
                                  "read from the environment variable FLOWMAESTRO_SECRET_<NAME>.")]


class ModelPrice(BaseModel):
    input_per_1m: float = Field(ge=0, description="USD per million input (prompt) tokens.")
    output_per_1m: float = Field(ge=0, description="USD per million output (completion) tokens.")


class HandlerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWMAESTRO_", extra="ignore", populate_by_name=True)

    http_allow_hosts: str = Field("", description="Hosts, IPs and CIDRs that http and llm nodes may reach even "
                                  "though they are loopback, private, link-local or metadata addresses "
                                  "(comma-separated; '*' allows everything).")
    openai_base_url: str | None = Field(None, description="Default base URL of llm and router nodes (an "
                                        "OpenAI-compatible API); OpenAI's own when unset.")
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("FLOWMAESTRO_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="API key of llm and router nodes without their own api_key_secret "
                    "(FLOWMAESTRO_OPENAI_API_KEY, else OPENAI_API_KEY).")
    default_model: str = Field("gpt-4o-mini", description="Model of llm and router nodes that name none.")
    max_loop_iterations: int = Field(10_000, ge=1, description="Most iterations one execution of a loop node "
                                     "runs, whatever its max_iterations says: a loop over more items fails the node "
                                     "(and a canvas whose loop count is known fails to compile), so one run cannot "
                                     "keep a shared worker busy for long.")
    llm_prices: dict[str, ModelPrice] = Field(default_factory=dict, description="JSON mapping a model name to "
                                              "{input_per_1m, output_per_1m} in USD, to report cost_usd.")


@lru_cache(maxsize=1)
def handler_settings() -> HandlerSettings:
    return HandlerSettings()


def reset_handler_settings() -> None:
    """Forget the cached settings: the next ``handler_settings()`` reads the environment again."""
    handler_settings.cache_clear()


def secret_env_name(name: str) -> str:
    return SECRET_ENV_PREFIX + name.upper()


def read_secret(name: str) -> str:
    """The value of the secret ``name`` (environment ``FLOWMAESTRO_SECRET_<NAME>``)."""
    if not re.match(SECRET_NAME_PATTERN, name):
        raise NodeError(f"{name!r} is not a secret name (letters, digits and underscores)",
                        error_type="MissingSecret")
    value = os.environ.get(secret_env_name(name))
    if not value:
        raise NodeError(f"secret {name!r} is not set: define the environment variable {secret_env_name(name)} "
                        f"where the workflow runs", error_type="MissingSecret")
    return value


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` with every occurrence of each secret replaced, in strings nested in dicts
    and lists too (servers echo credentials back in bodies and error messages)."""
    # Longest first, so a secret containing another one is replaced whole.
    ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not ordered:
        return value
    return _redact(value, ordered)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v, secrets) for v in value]
    return value
