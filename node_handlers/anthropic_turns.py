"""The Anthropic Messages protocol as a ``ModelTurns`` provider (``node_handlers.model_turns``).

Streamed (``stream: true``): text deltas go to ``on_text`` as they arrive; ``tool_use``
blocks are gathered from their ``input_json_delta`` pieces. The neutral conversation maps
onto Messages as Anthropic wants it: the system prompt apart, an assistant turn's tool calls
as ``tool_use`` blocks, and the results of one turn's calls together in one user message of
``tool_result`` blocks. A JSON schema (``output_schema``, a route choice) is asked for the
way Messages does structured output: a tool (``final_answer``) whose ``input_schema`` is the
schema, which the model must call (``tool_choice: {type: tool}``; ``{type: any}`` beside
the agent's own tools, so that it may call those first). The answer's JSON streams to
``on_text`` as the model writes it and is the reply's text; the caller validates it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx

from node_handlers.base import NodeError
from node_handlers.llm import status_retry_class
from node_handlers.model_turns import OnText, ToolCall, TurnReply, TurnRequest, parsed_arguments
from node_handlers.redaction import redact
from node_handlers.structured_output import ANSWER_TOOL, StructuredOutput

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 4096
"""Messages requires max_tokens; this when the node sets none."""


@dataclass
class _Block:
    kind: str
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)


class AnthropicTurns:
    def __init__(self, client: anthropic.AsyncAnthropic, base_url: str, secrets: Sequence[str] = ()):
        self.client = client
        self.base_url = base_url
        self.secrets = list(secrets)

    async def turn(self, request: TurnRequest, on_text: OnText) -> TurnReply:
        system = request.system or ""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": anthropic_messages(request.messages),
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "stream": True,
            "timeout": request.timeout_s,
        }
        if system:
            body["system"] = system
        tools = [
            {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)} for t in request.tools
        ]
        answer_tool = None
        if request.json_schema is not None:
            answer_tool = answer_tool_name({t.name for t in request.tools})
            tools.append(StructuredOutput(request.json_schema).anthropic_tool(answer_tool))
            body["tool_choice"] = {"type": "any"} if request.tools else {"type": "tool", "name": answer_tool}
        if tools:
            body["tools"] = tools
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, 1.0)  # Messages takes 0..1
        try:
            async with asyncio.timeout(request.timeout_s):
                return await self._stream(body, on_text, answer_tool)
        except (anthropic.AnthropicError, httpx.HTTPError, TimeoutError) as exc:
            raise anthropic_error(exc, self.base_url, request.timeout_s, self.secrets) from None

    async def _stream(self, body: dict[str, Any], on_text: OnText, answer_tool: str | None) -> TurnReply:
        blocks: dict[int, _Block] = {}
        model, stop_reason = str(body["model"]), None
        usage = {"input_tokens": 0, "output_tokens": 0}
        stream = await self.client.messages.create(**body)
        async for event in stream:
            if event.type == "message_start":
                model = event.message.model or model
                usage["input_tokens"] = event.message.usage.input_tokens or 0
                usage["output_tokens"] = event.message.usage.output_tokens or 0
            elif event.type == "content_block_start":
                block = event.content_block
                if block.type == "tool_use":
                    blocks[event.index] = _Block("tool_use", block.id, block.name)
                else:
                    blocks[event.index] = _Block(block.type)
            elif event.type == "content_block_delta":
                delta = event.delta
                found = blocks.setdefault(event.index, _Block(delta.type))
                if delta.type == "text_delta":
                    found.parts.append(delta.text)
                    on_text(delta.text)
                elif delta.type == "input_json_delta":
                    found.parts.append(delta.partial_json)
                    if found.kind == "tool_use" and found.name == answer_tool:
                        on_text(delta.partial_json)  # the answer streams as text does
            elif event.type == "message_delta":
                stop_reason = event.delta.stop_reason or stop_reason
                if event.usage is not None and event.usage.output_tokens is not None:
                    usage["output_tokens"] = event.usage.output_tokens
        ordered = [b for _, b in sorted(blocks.items())]
        text = "".join("".join(b.parts) for b in ordered if b.kind == "text")
        calls = tuple(
            ToolCall(b.id, b.name, *parsed_arguments("".join(b.parts)))
            for b in ordered
            if b.kind == "tool_use" and b.name != answer_tool
        )
        answers = [b for b in ordered if b.kind == "tool_use" and b.name == answer_tool]
        if answers and not calls:
            # The answer tool's input is the answer; its call is no tool call of the
            # conversation (no result follows it), and the turn ends with it.
            return TurnReply("".join(answers[0].parts) or "{}", (), usage, "end_turn", model)
        return TurnReply(text, calls, usage, stop_reason, model)


def answer_tool_name(taken: set[str]) -> str:
    """``final_answer``, unless one of the agent's tools has that name."""
    name, n = ANSWER_TOOL, 1
    while name in taken:
        n += 1
        name = f"{ANSWER_TOOL}_{n}"
    return name


def anthropic_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Neutral messages in the Messages form (system prompts are the request's ``system``)."""
    found: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "content": message["content"],
            }
            if message.get("is_error"):
                result["is_error"] = True
            previous = found[-1] if found else None
            if previous is not None and previous["role"] == "user" and isinstance(previous["content"], list):
                previous["content"].append(result)  # one turn's results together
            else:
                found.append({"role": "user", "content": [result]})
        elif role == "assistant":
            content: list[dict[str, Any]] = []
            if message.get("content"):
                content.append({"type": "text", "text": message["content"]})
            for call in message.get("tool_calls") or ():
                content.append({"type": "tool_use", "id": call["id"], "name": call["name"], "input": call["arguments"]})
            found.append({"role": "assistant", "content": content or ""})
        elif role in ("system", "developer"):
            continue  # the caller passes them as the request's system
        else:
            found.append({"role": "user", "content": message["content"]})
    return found


def anthropic_error(exc: BaseException, base_url: str, timeout_s: float, secrets: Sequence[str]) -> NodeError:
    """The NodeError for a failed call, redacted of the API key."""
    retry_class: str | None
    if isinstance(exc, (anthropic.APITimeoutError, httpx.TimeoutException, TimeoutError)):
        retry_class, message = "timeout", f"the model at {base_url} did not answer within {timeout_s:g} s"
    elif isinstance(exc, (anthropic.APIConnectionError, httpx.TransportError)):
        retry_class, message = "connection", f"cannot reach the model at {base_url}: {type(exc).__name__}"
    elif isinstance(exc, anthropic.APIStatusError):
        retry_class = status_retry_class(exc.status_code)
        body = exc.body
        detail = body.get("error", {}).get("message") if isinstance(body, dict) else None
        message = f"the model at {base_url} answered {exc.status_code}: {detail or exc.message}"
    else:
        retry_class, message = "error", f"the model call failed: {type(exc).__name__}: {exc}"
    return NodeError(redact(message, list(secrets)), retry_class=retry_class, error_type=type(exc).__name__)
