"""One model turn with tools, behind one small interface the agent node loops over.

A turn takes the conversation so far (``TurnRequest``: system, messages, tools) and gives
back what the model said (``TurnReply``: text, tool calls, usage, finish reason), streaming
its text through ``on_text`` as it arrives. The conversation is kept in a neutral form
(``user``, ``assistant`` with ``tool_calls``, ``tool`` results) that each protocol turns into
its own; the neutral form is also what the journal keeps, so a run executed again rebuilds
the same conversation whatever the provider.

``OpenAITurns`` speaks the OpenAI chat-completions protocol (any compatible server through
``base_url``), with the pooled, egress-pinned client of ``node_handlers.services``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import openai

from node_handlers.llm import CHARS_PER_TOKEN, api_error
from node_handlers.structured_output import StructuredOutput

OnText = Callable[[str], None]


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for. ``arguments`` is the parsed JSON object; ``arguments_error``
    says why the model's arguments were not one (the call then fails and the model is told)."""

    id: str
    name: str
    arguments: dict[str, Any]
    arguments_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"id": self.id, "name": self.name, "arguments": self.arguments}
        if self.arguments_error is not None:
            found["arguments_error"] = self.arguments_error
        return found

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToolCall:
        return cls(str(data["id"]), str(data["name"]), dict(data["arguments"]), data.get("arguments_error"))


@dataclass(frozen=True)
class TurnReply:
    text: str
    tool_calls: tuple[ToolCall, ...]
    usage: Mapping[str, int]
    """``input_tokens``, ``output_tokens``."""
    finish_reason: str | None
    model: str
    usage_estimated: bool = False

    def as_json(self) -> dict[str, Any]:
        """What the journal keeps of the turn."""
        return {
            "text": self.text,
            "tool_calls": [c.as_json() for c in self.tool_calls],
            "usage": dict(self.usage),
            "finish_reason": self.finish_reason,
            "model": self.model,
            "usage_estimated": self.usage_estimated,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TurnReply:
        return cls(
            text=str(data["text"]),
            tool_calls=tuple(ToolCall.from_json(c) for c in data["tool_calls"]),
            usage={k: int(v) for k, v in data["usage"].items()},
            finish_reason=data.get("finish_reason"),
            model=str(data["model"]),
            usage_estimated=bool(data.get("usage_estimated")),
        )


@dataclass(frozen=True)
class TurnRequest:
    model: str
    system: str | None
    messages: Sequence[Mapping[str, Any]]
    """Neutral messages: ``{role: user, content}``, ``{role: assistant, content, tool_calls}``,
    ``{role: tool, tool_call_id, name, content}``."""
    tools: Sequence[ToolSpec] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    json_schema: Mapping[str, Any] | None = None
    """Ask for JSON fitting this schema in the protocol's JSON-schema mode
    (``node_handlers.structured_output``); the caller validates the answer."""
    json_schema_name: str = "answer"
    timeout_s: float = 120.0


class ModelTurns(Protocol):
    """A provider: one model turn with tools."""

    async def turn(self, request: TurnRequest, on_text: OnText) -> TurnReply: ...


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAITurns:
    """The OpenAI chat-completions protocol, streamed, with tools."""

    def __init__(self, client: openai.AsyncOpenAI, base_url: str, secrets: Sequence[str] = ()):
        self.client = client
        self.base_url = base_url
        self.secrets = list(secrets)

    async def turn(self, request: TurnRequest, on_text: OnText) -> TurnReply:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": openai_messages(request.system, request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "timeout": request.timeout_s,
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": dict(t.parameters)},
                }
                for t in request.tools
            ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.json_schema is not None:
            body["response_format"] = StructuredOutput(
                request.json_schema, request.json_schema_name
            ).openai_response_format()
        try:
            async with asyncio.timeout(request.timeout_s):
                return await self._stream(body, on_text)
        except (openai.OpenAIError, httpx.HTTPError, TimeoutError) as exc:
            raise api_error(exc, self.base_url, request.timeout_s, secrets=self.secrets) from None

    async def _stream(self, body: dict[str, Any], on_text: OnText) -> TurnReply:
        parts: list[str] = []
        calls: dict[int, _PartialCall] = {}
        model, finish_reason, usage = str(body["model"]), None, None
        stream = await self.client.chat.completions.create(**body)
        async with stream:
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = {"input_tokens": chunk.usage.prompt_tokens, "output_tokens": chunk.usage.completion_tokens}
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        parts.append(delta.content)
                        on_text(delta.content)
                    for piece in (delta.tool_calls if delta is not None else None) or ():
                        partial = calls.setdefault(piece.index, _PartialCall())
                        partial.id = piece.id or partial.id
                        if piece.function is not None:
                            partial.name = piece.function.name or partial.name
                            if piece.function.arguments:
                                partial.arguments.append(piece.function.arguments)
                    finish_reason = choice.finish_reason or finish_reason
        text = "".join(parts)
        tool_calls = tuple(parsed_call(calls[i], i) for i in sorted(calls))
        estimated = usage is None
        if usage is None:
            usage = estimate_usage(body["messages"], text, tool_calls)
        return TurnReply(text, tool_calls, usage, finish_reason, model, usage_estimated=estimated)


def parsed_call(partial: _PartialCall, index: int) -> ToolCall:
    return ToolCall(partial.id or f"call_{index}", partial.name, *parsed_arguments("".join(partial.arguments)))


def parsed_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """A tool call's arguments as the model wrote them: the object, or why it is not one."""
    raw = raw or "{}"
    try:
        arguments = json.loads(raw)
    except ValueError as exc:
        return {}, f"the arguments are not valid JSON ({exc}): {raw[:200]!r}"
    if not isinstance(arguments, dict):
        return {}, f"the arguments are not a JSON object: {raw[:200]!r}"
    return arguments, None


def openai_messages(system: str | None, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Neutral messages in the chat-completions form."""
    found: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in messages:
        role = message["role"]
        if role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": message.get("content") or None}
            if message.get("tool_calls"):
                entry["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                    }
                    for c in message["tool_calls"]
                ]
            found.append(entry)
        elif role == "tool":
            found.append({"role": "tool", "tool_call_id": message["tool_call_id"], "content": message["content"]})
        else:
            found.append({"role": role, "content": message["content"]})
    return found


def estimate_usage(messages: Any, text: str, calls: Sequence[ToolCall]) -> dict[str, int]:
    """Usage when the server reports none: about 4 characters a token."""
    sent = len(json.dumps(messages))
    written = len(text) + sum(len(json.dumps(c.arguments)) for c in calls)
    return {"input_tokens": -(-sent // CHARS_PER_TOKEN), "output_tokens": -(-written // CHARS_PER_TOKEN)}
