"""The llm and router nodes: streamed chat completions from an OpenAI-compatible API, or
from the Anthropic Messages API (``provider: anthropic``).

Every call streams: each content delta is published as ``stream:chunk`` while the model
writes, then ``stream:done``. The API key comes from the node's ``credential`` (a credential
its owner stored, ``node_handlers.credentials``), its ``api_key_secret`` (the
environment variable ``FLOWMAESTRO_SECRET_<NAME>``, bound to owners and hosts) or from the
handler settings (``FLOWMAESTRO_OPENAI_API_KEY`` / ``OPENAI_API_KEY``), which goes to the
configured default base URL only; it is redacted from every error message. The base URL
passes the egress policy, and the connection is pinned to the checked address (``node_handlers.egress``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
import openai
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from builder.catalog import JSON_SCHEMA, UNIQUE_KEYS, NodeConfig, Templatable, at_most_one_of, exactly_one_of
from builder.plan import RetryPolicy
from node_handlers.base import ERROR_HANDLE, SOURCE_HANDLE, Completed, HandleDoc, NodeContext, NodeError, NodeHandler
from node_handlers.branching import HANDLE_ID, check_unique_ids
from node_handlers.budgets import budgeted_request, record_usage
from node_handlers.credentials import CredentialName, read_credential
from node_handlers.egress import check_url
from node_handlers.http import parse_retry_after
from node_handlers.operator_secrets import read_secret
from node_handlers.redaction import redact
from node_handlers.services import HandlerServices, services_for
from node_handlers.settings import HandlerSettings, SecretName
from node_handlers.structured_output import (
    REPAIR_TURNS,
    InvalidAnswer,
    OutputSchema,
    StructuredOutput,
    check_schema,
    output_invalid,
    repair_message,
    schema_problem,
)

OPENAI_BASE_URL = "https://api.openai.com/v1"
CHARS_PER_TOKEN = 4
"""Rough size of a token in English text, to estimate usage when the server reports none."""
EXCERPT_CHARS = 200
LLM_RETRY = RetryPolicy(
    max_attempts=3,
    initial_delay_s=1.0,
    backoff_factor=2.0,
    max_delay_s=30.0,
    jitter=0.2,
    retry_on=frozenset({"timeout", "connection", "5xx", "429", "error"}),
)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] = Field(description="Text, or content parts (images, ...).")


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] = Field(
        alias="schema", description="JSON Schema the reply must fit.", json_schema_extra={JSON_SCHEMA: True}
    )
    strict: bool | None = None
    description: str | None = None

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return check_schema(schema)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


ResponseFormat = Annotated[JsonSchemaFormat | JsonObjectFormat, Field(discriminator="type")]
Temperature = Annotated[float, Field(ge=0, le=2)]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


ONE_KEY_SOURCE = at_most_one_of("credential", "api_key_secret")


class ModelCallConfig(NodeConfig):
    """What every node calling a chat model has."""

    model_config = ConfigDict(json_schema_extra=ONE_KEY_SOURCE)

    provider: Literal["openai", "anthropic"] = Field(
        "openai",
        description="The model API's protocol: openai (chat completions, any compatible server) or "
        "anthropic (Messages).",
    )
    model: str | None = Field(None, description="Model name; FLOWMAESTRO_DEFAULT_MODEL when absent.")
    system: str | None = Field(None, description="System instructions.")
    temperature: Templatable[Temperature] | None = None
    max_tokens: Templatable[PositiveInt] | None = Field(None, description="Limit of generated tokens.")
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible API base URL (e.g. http://host:11434/v1); "
        "FLOWMAESTRO_OPENAI_BASE_URL or OpenAI's when absent.",
    )
    api_key_secret: SecretName | None = Field(
        None, description="Secret holding the API key; the handler settings' key (OPENAI_API_KEY) when absent."
    )
    credential: CredentialName | None = Field(
        None,
        description="A stored credential holding the API key: api_key (its api_key) or bearer (its token).",
    )
    timeout_s: Templatable[PositiveFloat] = Field(120.0, description="Deadline of the whole streamed reply.")

    @model_validator(mode="after")
    def _one_key_source(self) -> ModelCallConfig:
        if self.credential is not None and self.api_key_secret is not None:
            raise ValueError("give credential (a stored one) or api_key_secret (an operator secret), not both")
        return self


class LlmConfig(ModelCallConfig):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                ONE_KEY_SOURCE,
                exactly_one_of("prompt", "messages"),
                at_most_one_of("response_format", "output_schema"),
            ]
        }
    )
    prompt: str | None = Field(None, description="The user message; a template.")
    messages: Templatable[list[Message]] | None = Field(None, description="The conversation instead of prompt.")
    response_format: ResponseFormat | None = Field(
        None,
        description="Ask for JSON ({type: json_object}) or "
        "JSON fitting a schema ({type: json_schema, json_schema: "
        "{name, schema}}); the reply is parsed into output.json.",
    )
    output_schema: OutputSchema | None = Field(
        None,
        description="JSON Schema of the answer, asked for in the provider's JSON-schema mode and parsed into "
        f"output.json; an answer that does not fit is sent back with the errors up to {REPAIR_TURNS} times, "
        "then the node fails (output_invalid).",
    )

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> LlmConfig:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.response_format is not None and self.output_schema is not None:
            raise ValueError("give response_format or output_schema, not both")
        return self


@dataclass(frozen=True)
class ChatReply:
    text: str
    model: str
    finish_reason: str | None
    usage: dict[str, Any]
    latency_ms: int
    cost_usd: float | None

    def then(self, later: ChatReply) -> ChatReply:
        """This reply followed by ``later`` (a repair): the later text, the usage, cost and
        time of both."""
        usage = {k: self.usage[k] + later.usage[k] for k in ("input_tokens", "output_tokens")}
        if self.usage.get("estimated") or later.usage.get("estimated"):
            usage["estimated"] = True
        cost = None if self.cost_usd is None or later.cost_usd is None else round(self.cost_usd + later.cost_usd, 8)
        return ChatReply(later.text, later.model, later.finish_reason, usage, self.latency_ms + later.latency_ms, cost)

    def usage_totals(self) -> dict[str, Any]:
        """What the engine sums per run (its numbers)."""
        totals = {"input_tokens": self.usage["input_tokens"], "output_tokens": self.usage["output_tokens"]}
        totals["model"] = self.model  # by which model, for metrics and traces (not summed: a string)
        if self.cost_usd is not None:
            totals["cost_usd"] = self.cost_usd
        return totals


class LlmHandler(NodeHandler):
    type = "llm"
    label = "LLM"
    category = "ai"
    side_effects = True  # a call to a model provider, billed
    handle_docs = (SOURCE_HANDLE, ERROR_HANDLE)
    description = "Streams a chat completion from an OpenAI-compatible API; output {text, json?, usage, ...}."
    Config = LlmConfig
    default_retry = LLM_RETRY

    async def run(self, config: LlmConfig, ctx: NodeContext) -> Completed:
        response_format = (
            config.response_format.model_dump(by_alias=True, exclude_none=True) if config.response_format else None
        )
        answer: Any = None
        if config.output_schema is not None:
            reply, answer = await ask_structured(
                config, build_messages(config), ctx, StructuredOutput(config.output_schema)
            )
        else:
            reply = await stream_chat(config, build_messages(config), ctx, response_format)
        output: dict[str, Any] = {
            "text": reply.text,
            "usage": reply.usage,
            "model": reply.model,
            "finish_reason": reply.finish_reason,
            "latency_ms": reply.latency_ms,
        }
        if config.response_format is not None:
            schema = (
                config.response_format.json_schema.schema_
                if isinstance(config.response_format, JsonSchemaFormat)
                else None
            )
            output["json"] = parse_json_reply(reply.text, schema)
        if config.output_schema is not None:
            output["json"] = answer
        if reply.cost_usd is not None:
            output["cost_usd"] = reply.cost_usd
        return Completed(output=output, usage=reply.usage_totals())


def build_messages(config: LlmConfig) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": config.system}] if config.system else []
    if config.messages is not None:
        messages += [Message.model_validate(m).model_dump() for m in config.messages]  # type: ignore[union-attr]
    else:
        messages.append({"role": "user", "content": config.prompt})
    return messages


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=HANDLE_ID, description="Names the handle route-<id>.")
    description: str = Field("", description="When to take this route; the model reads it.")


class RouterConfig(ModelCallConfig):
    routes: list[Route] = Field(min_length=1, json_schema_extra={UNIQUE_KEYS: ["id"]})
    prompt: str = Field(description="The text to classify; usually a template.")
    temperature: Templatable[Temperature] | None = 0.0

    @field_validator("routes")
    @classmethod
    def _unique_ids(cls, routes: list[Route]) -> list[Route]:
        check_unique_ids([r.id for r in routes], "route")
        return routes


class RouterHandler(NodeHandler):
    type = "router"
    label = "LLM router"
    category = "ai"
    side_effects = True  # a call to a model provider, billed
    handle_docs = (
        HandleDoc("route-<id>", "Fires when the model picked that route.", "data.routes[].id"),
        ERROR_HANDLE,
    )
    description = "A model picks one of data.routes for the prompt; fires route-<id>; output {route, reasoning}."
    Config = RouterConfig
    default_retry = LLM_RETRY

    def handles(self, config: RouterConfig) -> frozenset[str]:  # type: ignore[override]
        return frozenset({f"route-{r.id}" for r in config.routes} | {"error"})

    async def run(self, config: RouterConfig, ctx: NodeContext) -> Completed:
        ids = [r.id for r in config.routes]
        messages = [
            {"role": "system", "content": router_instructions(config)},
            {"role": "user", "content": config.prompt},
        ]
        # The schema's enum also catches a server that ignored it: an unknown route is repaired.
        reply, choice = await ask_structured(
            config, messages, ctx, StructuredOutput(router_schema(ids), name="route_choice")
        )
        route = choice["route"]
        return Completed(
            output={"route": route, "reasoning": choice.get("reasoning", "")},
            handles=frozenset({f"route-{route}"}),
            usage=reply.usage_totals(),
        )


def router_instructions(config: RouterConfig) -> str:
    routes = "\n".join(f"- {r.id}: {r.description or r.id}" for r in config.routes)
    text = (
        "Classify the user's message into exactly one of these routes:\n"
        f"{routes}\n"
        'Reply with JSON only: {"route": "<one route id>", "reasoning": "<one short sentence>"}.'
    )
    return f"{config.system}\n\n{text}" if config.system else text


def router_schema(ids: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["route", "reasoning"],
        "properties": {"route": {"type": "string", "enum": ids}, "reasoning": {"type": "string"}},
    }


def router_response_format(ids: list[str]) -> dict[str, Any]:
    return StructuredOutput(router_schema(ids), name="route_choice").openai_response_format()


# The streamed call, shared by both nodes.


MODEL_CREDENTIAL_TYPES = ("api_key", "bearer")


@dataclass(frozen=True)
class ModelEndpoint:
    base_url: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class ModelApi:
    """A provider's API as the operator configured it: where its calls go by default, and
    the operator's key, which goes there only."""

    name: str
    public_url: str
    default_url: str
    operator_key: str = field(repr=False)
    key_variables: str
    """The environment variables that set ``operator_key``, for the error without one."""


def openai_api(settings: HandlerSettings) -> ModelApi:
    return ModelApi(
        "OpenAI",
        OPENAI_BASE_URL,
        (settings.openai_base_url or OPENAI_BASE_URL).rstrip("/"),
        settings.openai_api_key.get_secret_value() if settings.openai_api_key is not None else "",
        "OPENAI_API_KEY (or FLOWMAESTRO_OPENAI_API_KEY)",
    )


async def resolve_endpoint(
    config: ModelCallConfig, owner: str | None, services: HandlerServices, api: ModelApi | None = None
) -> ModelEndpoint:
    """Base URL and API key of a model node of ``owner``'s run: the one function every node
    calling a model asks (``api``: the provider's, OpenAI's by default). The key: the node's
    stored ``credential`` (the owner's, read now), its ``api_key_secret`` (bound to hosts),
    else the operator's default key, which goes only to the configured default base URL: a
    canvas (or a template of its inputs) pointing ``base_url`` elsewhere would otherwise
    receive it."""
    api = api or openai_api(services.settings)
    base_url = (config.base_url or api.default_url).rstrip("/")
    if config.credential:
        credential = await read_credential(services, owner, config.credential, MODEL_CREDENTIAL_TYPES)
        return ModelEndpoint(base_url, credential.data["api_key" if credential.type == "api_key" else "token"])
    if config.api_key_secret:
        secret = read_secret(config.api_key_secret, owner)
        secret.check_url(base_url)
        return ModelEndpoint(base_url, secret.value)
    if api.operator_key:
        if base_url != api.default_url:
            raise NodeError(
                f"base_url {base_url} is not the configured model API ({api.default_url}): the operator's "
                f"API key goes there only; name a stored credential of yours in credential, or a secret "
                f"bound to {base_url} in api_key_secret",
                error_type="MissingSecret",
            )
        return ModelEndpoint(base_url, api.operator_key)
    if base_url == api.public_url:
        raise NodeError(
            f"no API key for {api.name}: name a stored credential in the node's credential, or set "
            f"{api.key_variables} where the workflow runs",
            error_type="MissingSecret",
        )
    return ModelEndpoint(base_url, "unused")  # no key configured at all: local servers (Ollama, vLLM) accept any


async def ask_structured(
    config: ModelCallConfig, messages: list[dict[str, Any]], ctx: NodeContext, structured: StructuredOutput
) -> tuple[ChatReply, Any]:
    """A reply in the provider's JSON-schema mode and its JSON, valid against the schema. An
    answer that does not fit goes back to the model with the reason, ``REPAIR_TURNS`` times
    at most; then the node fails with ``output_invalid``. The chunks of a repair carry
    ``repair: n``: a client shows the latest repair's text."""
    reply: ChatReply | None = None
    for repair in range(REPAIR_TURNS + 1):
        later = await stream_chat(config, messages, ctx, None, structured=structured, repair=repair)
        reply = later if reply is None else reply.then(later)
        try:
            return reply, structured.parse(later.text)
        except InvalidAnswer as problem:
            if repair == REPAIR_TURNS:
                raise output_invalid(
                    problem,
                    "the model's answer",
                    {"requests": repair + 1, "text": later.text[:EXCERPT_CHARS], "usage": reply.usage_totals()},
                ) from None
            messages = [
                *messages,
                {"role": "assistant", "content": later.text},
                {"role": "user", "content": repair_message(problem)},
            ]
    raise AssertionError("unreachable")


async def stream_chat(
    config: ModelCallConfig,
    messages: list[dict[str, Any]],
    ctx: NodeContext,
    response_format: dict[str, Any] | None,
    *,
    structured: StructuredOutput | None = None,
    repair: int = 0,
) -> ChatReply:
    """One streamed reply, checked against the run's budgets before it is asked for and charged
    to them after. ``structured``: ask in the provider's JSON-schema mode (instead of
    ``response_format``, which goes to OpenAI-compatible servers as it is)."""
    tag = {"repair": repair} if repair else {}
    async with services_for(ctx.services) as services, budgeted_request(ctx, services) as usage:
        if config.provider == "anthropic":
            if structured is None and response_format is not None:
                schema = (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
                structured = StructuredOutput(schema)
            reply = await _anthropic_chat(config, messages, ctx, structured, services, tag)
        else:
            if structured is not None:
                response_format = structured.openai_response_format()
            reply = await _stream_chat(config, messages, ctx, response_format, services, tag)
        record_usage(usage, reply.usage, reply.cost_usd)  # charged to the run's budgets
        return reply


async def _anthropic_chat(
    config: ModelCallConfig,
    messages: list[dict[str, Any]],
    ctx: NodeContext,
    structured: StructuredOutput | None,
    services: HandlerServices,
    tag: dict[str, Any],
) -> ChatReply:
    """A reply through the Anthropic Messages protocol (``node_handlers.anthropic_turns``);
    JSON replies are asked for with a forced answer tool and checked by the caller as for
    any provider."""
    # Imported here: the provider modules build on this one.
    from node_handlers.model_turns import TurnRequest
    from node_handlers.providers import turns_for

    turns = await turns_for(config, ctx.owner, services)
    system = "\n\n".join(str(m["content"]) for m in messages if m["role"] in ("system", "developer")) or None
    model = config.model or services.settings.default_model
    request = TurnRequest(
        model=model,
        system=system,
        messages=[m for m in messages if m["role"] not in ("system", "developer")],
        temperature=float(config.temperature) if config.temperature is not None else None,
        max_tokens=int(config.max_tokens) if config.max_tokens is not None else None,
        json_schema=structured.schema if structured is not None else None,
        json_schema_name=structured.name if structured is not None else "answer",
        timeout_s=float(config.timeout_s),
    )
    parts: list[str] = []

    def on_text(text: str) -> None:
        ctx.emit("stream:chunk", {"index": len(parts), "text": text, "attempt": ctx.attempt, **tag})
        parts.append(text)

    started = time.monotonic()
    reply = await turns.turn(request, on_text)
    ctx.emit("stream:done", {"text_length": len(reply.text), "attempt": ctx.attempt, **tag})
    usage = dict(reply.usage)
    return ChatReply(
        text=reply.text,
        model=reply.model,
        finish_reason=reply.finish_reason,
        usage=usage,
        latency_ms=round((time.monotonic() - started) * 1000),
        cost_usd=cost_of(usage, model, reply.model, prices=services.settings.llm_prices),
    )


async def _stream_chat(
    config: ModelCallConfig,
    messages: list[dict[str, Any]],
    ctx: NodeContext,
    response_format: dict[str, Any] | None,
    services: HandlerServices,
    tag: dict[str, Any],
) -> ChatReply:
    settings = services.settings
    endpoint = await resolve_endpoint(config, ctx.owner, services)
    base_url, api_key = endpoint.base_url, endpoint.api_key
    await check_url(base_url, services.egress)
    model = config.model or settings.default_model
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "timeout": float(config.timeout_s),
    }
    if config.temperature is not None:
        request["temperature"] = float(config.temperature)
    if config.max_tokens is not None:
        request["max_tokens"] = int(config.max_tokens)
    if response_format is not None:
        request["response_format"] = response_format
    started = time.monotonic()
    try:
        async with asyncio.timeout(float(config.timeout_s)):
            collected = await collect_stream(services.openai_client(base_url, api_key), request, ctx, tag)
    except (openai.OpenAIError, httpx.HTTPError, TimeoutError) as exc:
        raise api_error(exc, base_url, float(config.timeout_s), secrets=[api_key]) from None
    text = "".join(collected.parts)
    ctx.emit("stream:done", {"text_length": len(text), "attempt": ctx.attempt, **tag})
    usage = collected.usage or estimate_usage(messages, len(collected.parts))
    return ChatReply(
        text=text,
        model=collected.model or model,
        finish_reason=collected.finish_reason,
        usage=usage,
        latency_ms=round((time.monotonic() - started) * 1000),
        cost_usd=cost_of(usage, model, collected.model, prices=settings.llm_prices),
    )


@dataclass
class StreamState:
    parts: list[str]
    model: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


async def collect_stream(
    client: openai.AsyncOpenAI, request: dict[str, Any], ctx: NodeContext, tag: dict[str, Any] | None = None
) -> StreamState:
    state = StreamState(parts=[])
    stream = await client.chat.completions.create(**request)
    async with stream:
        async for chunk in stream:
            state.model = chunk.model or state.model
            if chunk.usage is not None:
                state.usage = {
                    "input_tokens": chunk.usage.prompt_tokens,
                    "output_tokens": chunk.usage.completion_tokens,
                }
            for choice in chunk.choices[:1]:
                delta = choice.delta.content if choice.delta else None
                if delta:
                    # attempt: a client can drop the chunks of an attempt that failed halfway.
                    ctx.emit(
                        "stream:chunk",
                        {"index": len(state.parts), "text": delta, "attempt": ctx.attempt, **(tag or {})},
                    )
                    state.parts.append(delta)
                state.finish_reason = choice.finish_reason or state.finish_reason
    return state


def estimate_usage(messages: list[dict[str, Any]], chunks: int) -> dict[str, Any]:
    """Usage when the server reports none: a chunk is about a token, a token about 4 characters."""
    chars = sum(len(m["content"]) if isinstance(m["content"], str) else len(json.dumps(m["content"])) for m in messages)
    return {"input_tokens": math.ceil(chars / CHARS_PER_TOKEN), "output_tokens": chunks, "estimated": True}


def cost_of(usage: dict[str, Any], *models: str | None, prices: dict[str, Any]) -> float | None:
    price = next((prices[m] for m in models if m and m in prices), None)
    if price is None:
        return None
    cost = (usage["input_tokens"] * price.input_per_1m + usage["output_tokens"] * price.output_per_1m) / 1_000_000
    return round(cost, 8)


_FENCED = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def parse_json_reply(text: str, schema: dict[str, Any] | None) -> Any:
    """The reply as JSON, checked against ``schema``. A reply that is not JSON or does not fit
    is a retryable failure: models get it right on another try more often than not."""
    match = _FENCED.match(text)
    try:
        value = json.loads(match.group(1) if match else text)
    except ValueError as exc:  # a JSONDecodeError, or a plain ValueError (an integer past 4,300 digits)
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise NodeError(
            f"the model's reply is not valid JSON ({reason}): {text[:EXCERPT_CHARS]!r}",
            retry_class="error",
            error_type="InvalidModelOutput",
        ) from None
    problem = schema_problem(schema, value) if schema is not None else None
    if problem is not None:
        raise NodeError(f"the model's reply: {problem}", retry_class="error", error_type="InvalidModelOutput")
    return value


def api_error(exc: BaseException, base_url: str, timeout_s: float, *, secrets: list[str]) -> NodeError:
    """The NodeError for a failed call, its message redacted of the API key."""
    retry_after: float | None = None
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException, TimeoutError)):
        retry_class, message = "timeout", f"the model at {base_url} did not answer within {timeout_s:g} s"
    elif isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
        retry_class, message = "connection", f"cannot reach the model at {base_url}: {_cause_text(exc)}"
    elif isinstance(exc, openai.APIStatusError):
        retry_class = status_retry_class(exc.status_code)
        message = f"the model at {base_url} answered {exc.status_code}: {_server_message(exc)}"
        if exc.status_code == 429:
            retry_after = _retry_after(exc.response.headers)
    else:
        retry_class, message = "error", f"the model call failed: {type(exc).__name__}: {exc}"
    return NodeError(
        redact(message, secrets), retry_class=retry_class, retry_after_s=retry_after, error_type=type(exc).__name__
    )


def status_retry_class(status: int) -> str | None:
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    if status == 408:
        return "timeout"
    return None


def _retry_after(headers: Any) -> float | None:
    milliseconds = headers.get("retry-after-ms")
    try:
        if milliseconds:
            return float(milliseconds) / 1000
    except ValueError:
        pass
    return parse_retry_after(headers.get("retry-after"))


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own words (``{"error": {"message": ...}}``), else the SDK's summary."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message


def _cause_text(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


HANDLERS = [LlmHandler, RouterHandler]
