"""Which provider a model-calling node talks to, and with which key.

``turns_for`` gives the ``ModelTurns`` of a node's ``provider`` (``openai``: chat
completions; ``anthropic``: Messages) with the pooled, egress-pinned client of the process;
``endpoint_of`` is the one place its base URL and API key are resolved (through
``llm.resolve_endpoint``: a secret of the owner named in ``api_key_secret``, else the
operator's key, which goes to the configured default URL of that provider only).
"""

from __future__ import annotations

from node_handlers.anthropic_turns import ANTHROPIC_BASE_URL, AnthropicTurns
from node_handlers.base import NodeError
from node_handlers.egress import check_url
from node_handlers.llm import ModelCallConfig, resolve_endpoint
from node_handlers.model_turns import ModelTurns, OpenAITurns
from node_handlers.services import HandlerServices
from node_handlers.settings import HandlerSettings


def endpoint_of(config: ModelCallConfig, owner: str | None, settings: HandlerSettings) -> tuple[str, str]:
    """Base URL and API key of a model-calling node of ``owner``'s run."""
    if config.provider != "anthropic":
        return resolve_endpoint(config, owner, settings)
    # The same rules with Anthropic's default URL and operator key in OpenAI's place.
    default_url = settings.anthropic_base_url or ANTHROPIC_BASE_URL
    as_openai = settings.model_copy(
        update={"openai_base_url": default_url, "openai_api_key": settings.anthropic_api_key}
    )
    base_url, api_key = resolve_endpoint(config, owner, as_openai)
    if api_key == "unused" and base_url == ANTHROPIC_BASE_URL:
        raise NodeError(
            "no API key for Anthropic: set ANTHROPIC_API_KEY (or FLOWMAESTRO_ANTHROPIC_API_KEY) where the "
            "workflow runs, or name a secret in the node's api_key_secret",
            error_type="MissingSecret",
        )
    return base_url, api_key


async def turns_for(config: ModelCallConfig, owner: str | None, services: HandlerServices) -> ModelTurns:
    base_url, api_key = endpoint_of(config, owner, services.settings)
    await check_url(base_url, services.egress)
    if config.provider == "anthropic":
        return AnthropicTurns(services.anthropic_client(base_url, api_key), base_url, secrets=[api_key])
    return OpenAITurns(services.openai_client(base_url, api_key), base_url, secrets=[api_key])
