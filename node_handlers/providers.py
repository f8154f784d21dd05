"""Which provider a model-calling node talks to, and with which key.

``turns_for`` gives the ``ModelTurns`` of a node's ``provider`` (``openai``: chat
completions; ``anthropic``: Messages) with the pooled, egress-pinned client of the process;
``endpoint_of`` is the one place its base URL and API key are resolved (through
``llm.resolve_endpoint``: the owner's stored ``credential``, a secret of the owner named in
``api_key_secret``, else the operator's key, which goes to the configured default URL of
that provider only).
"""

from __future__ import annotations

from node_handlers.anthropic_turns import ANTHROPIC_BASE_URL, AnthropicTurns
from node_handlers.egress import check_url
from node_handlers.llm import ModelApi, ModelCallConfig, ModelEndpoint, openai_api, resolve_endpoint
from node_handlers.model_turns import ModelTurns, OpenAITurns
from node_handlers.services import HandlerServices
from node_handlers.settings import HandlerSettings


def anthropic_api(settings: HandlerSettings) -> ModelApi:
    return ModelApi(
        "Anthropic",
        ANTHROPIC_BASE_URL,
        (settings.anthropic_base_url or ANTHROPIC_BASE_URL).rstrip("/"),
        settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key is not None else "",
        "ANTHROPIC_API_KEY (or FLOWMAESTRO_ANTHROPIC_API_KEY)",
    )


async def endpoint_of(config: ModelCallConfig, owner: str | None, services: HandlerServices) -> ModelEndpoint:
    """Base URL and API key of a model-calling node of ``owner``'s run."""
    api = anthropic_api(services.settings) if config.provider == "anthropic" else openai_api(services.settings)
    return await resolve_endpoint(config, owner, services, api)


async def turns_for(config: ModelCallConfig, owner: str | None, services: HandlerServices) -> ModelTurns:
    endpoint = await endpoint_of(config, owner, services)
    base_url, api_key = endpoint.base_url, endpoint.api_key
    await check_url(base_url, services.egress)
    if config.provider == "anthropic":
        return AnthropicTurns(services.anthropic_client(base_url, api_key), base_url, secrets=[api_key])
    return OpenAITurns(services.openai_client(base_url, api_key), base_url, secrets=[api_key])
