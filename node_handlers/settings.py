"""Settings of the handlers that talk to the outside (http, llm, router), and secrets.

Settings are read once per process from the environment (``FLOWMAESTRO_*``) through
``handler_settings()``; tests change the environment and call ``reset_handler_settings()``.

Secrets are different: a canvas never holds one. It names it (``token_secret: "GITHUB"``)
and the handler reads ``FLOWMAESTRO_SECRET_GITHUB`` from the environment when the node
runs, so rotating a secret needs no restart, and no template can ever read it. Each is
bound to owners and hosts (``node_handlers.operator_secrets``); every encoding of it is
redacted (``node_handlers.redaction``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from node_handlers.operator_secrets import (SECRET_ENV_PREFIX, SECRET_NAME_PATTERN, OperatorSecret,  # noqa: F401
                                            read_secret, secret_env_name)
from node_handlers.redaction import REDACTED, redact  # noqa: F401 (their home before)

SecretName = Annotated[str, Field(pattern=SECRET_NAME_PATTERN, description="Name of a secret: its value is "
                                  "read from the environment variable FLOWMAESTRO_SECRET_<NAME>, bound to owners "
                                  "and hosts (FLOWMAESTRO_SECRET_<NAME>_OWNERS, _HOSTS).")]


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
    llm_prices: dict[str, ModelPrice] = Field(default_factory=dict, description="JSON mapping a model name to "
                                              "{input_per_1m, output_per_1m} in USD, to report cost_usd.")


@lru_cache(maxsize=1)
def handler_settings() -> HandlerSettings:
    return HandlerSettings()


def reset_handler_settings() -> None:
    """Forget the cached settings: the next ``handler_settings()`` reads the environment again."""
    handler_settings.cache_clear()
