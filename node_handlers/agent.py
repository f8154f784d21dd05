"""The agent node: a model that calls tools in a loop, every step of it durable.

The loop: a model turn (``node_handlers.model_turns``); if the model asks for tools, the
calls run (concurrently when it asked for several, ``node_handlers.agent_tools``) and their
results go back to it; until it answers without tool calls, or a limit is reached
(``max_turns``, ``max_tool_calls``, ``timeout_s``: a node error of type ``agent_limit``).

Every completed turn and every completed tool call is a journaled sub-step of the node
execution (``NodeCapabilities.journal_step``): a run executed again (a crashed worker, a
suspended approval, a retry) reads them back instead of asking the model or calling the tool
again, and so continues after its last completed step. The conversation is rebuilt from the
journaled steps alone, so it is the same one.

The node runs in the flow (``in_flow``): it starts child runs for workflow tools, and its
steps are journaled as they complete, so the runner's retries and timeout do not apply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, Field, PositiveInt, field_validator, model_validator

from builder.catalog import NAMES_FROM, UNIQUE_KEYS, Templatable
from node_handlers.agent_mcp import McpTool
from node_handlers.agent_memory import AgentMemories, MemoryConfig
from node_handlers.agent_tools import CallResult, HttpTool, NamedTool, Tool, WorkflowTool, call_tool, toolbox
from node_handlers.approval import Approvers, ApproversField, FormField, ToolCallApproval
from node_handlers.base import Completed, NodeContext, NodeError, NodeHandler
from node_handlers.budgets import budgeted_request, record_usage
from node_handlers.llm import EXCERPT_CHARS, ONE_KEY_SOURCE, ModelCallConfig, PositiveFloat, cost_of
from node_handlers.model_turns import ModelTurns, ToolCall, ToolSpec, TurnReply, TurnRequest
from node_handlers.providers import turns_for
from node_handlers.services import HandlerServices, services_for
from node_handlers.structured_output import (
    REPAIR_TURNS,
    InvalidAnswer,
    OutputSchema,
    StructuredOutput,
    output_invalid,
    repair_message,
)

LIMIT = "agent_limit"


class AgentConfig(ModelCallConfig):
    model_config = ConfigDict(
        json_schema_extra={**ONE_KEY_SOURCE, NAMES_FROM: {"require_approval": ["tools", "name", "include"]}}
    )

    prompt: str = Field(description="The user message; a template.")
    tools: list[Tool] = Field(
        default_factory=list,
        description="What the model may call: http, workflow and mcp tools.",
        json_schema_extra={UNIQUE_KEYS: ["name"]},
    )
    max_turns: PositiveInt = Field(10, le=200, description="Model turns at most; then the node fails (agent_limit).")
    max_tool_calls: PositiveInt = Field(
        20, le=1000, description="Tool calls at most; then the node fails (agent_limit)."
    )
    timeout_s: Templatable[PositiveFloat] = Field(
        600.0, description="Deadline of the whole loop, every turn and tool call; then the node fails (agent_limit)."
    )

    require_approval: list[str] = Field(
        default_factory=list,
        description="Tools whose every call waits for a person's approval (approve, reject, or approve "
        "with edited arguments); a rejection is the tool's result for the model.",
    )
    approvers: ApproversField = Field(
        default_factory=lambda: Approvers(),
        description="Who decides the tool approvals: {users, groups} (a plain list: users). None: the run's owner.",
    )
    required: int = Field(1, ge=1, le=100, description="Approvals each tool call needs; the first rejection rejects.")
    allow_self_approval: bool = Field(True, description="False: whoever started the run may not decide.")

    @field_validator("approvers", mode="before")
    @classmethod
    def _plain_approvers(cls, value: Any) -> Any:
        return {"users": value} if isinstance(value, list) else value

    memory: MemoryConfig | None = Field(
        None,
        description="Keep the conversation under a key (per owner and workflow): loaded before the first "
        "turn, saved after the last, trimmed to max_tokens oldest exchange first.",
    )
    output_schema: OutputSchema | None = Field(
        None,
        description="JSON Schema of the final answer: parsed into output.json; an answer that does not fit "
        f"is sent back with the errors up to {REPAIR_TURNS} times, then the node fails (output_invalid).",
    )

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, tools: list[HttpTool | WorkflowTool | McpTool]) -> list[HttpTool | WorkflowTool | McpTool]:
        names = [t.name for t in tools if not isinstance(t, McpTool)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"tool names must be unique; repeated: {', '.join(repeated)}")
        return tools

    @model_validator(mode="after")
    def _approvals_name_tools(self) -> AgentConfig:
        known = {t.name for t in self.tools if not isinstance(t, McpTool)}
        known |= {name for t in self.tools if isinstance(t, McpTool) for name in t.include or ()}
        unknown = sorted(set(self.require_approval) - known)
        if unknown:
            raise ValueError(
                f"require_approval names tools the agent does not have: {', '.join(unknown)} "
                "(an MCP server's tools count when its include lists them)"
            )
        return self


class AgentHandler(NodeHandler):
    type = "agent"
    label = "Agent"
    category = "ai"
    side_effects = True  # billed model calls, and tools that act
    description = (
        "A model that calls tools (http, saved workflows, MCP servers) in a loop until it answers; every turn and "
        "tool call is journaled. Output {text, tool_calls, turns, usage, cost_usd, model, finish_reason}."
    )
    Config = AgentConfig
    cacheable = False
    in_flow = True
    own_scope_keys = frozenset({"tools"})
    """A tool's templates read the model's arguments (``args``) when it is called, not the run's."""

    async def run(self, config: AgentConfig, ctx: NodeContext) -> Completed:
        async with services_for(ctx.services) as services:
            provider = await turns_for(config, ctx.owner, services)
            specs, named = await toolbox(config.tools, ctx, services)
            loop = AgentLoop(config, ctx, provider, specs, services, named)
            try:
                async with asyncio.timeout(float(config.timeout_s)) as deadline:
                    loop.deadline = deadline
                    return await loop.run()
            except TimeoutError:
                raise limit_error(
                    f"the agent did not finish within timeout_s ({float(config.timeout_s):g} s)", loop
                ) from None


@dataclass(frozen=True)
class Answer:
    json: Any
    """The answer's JSON when the node has an ``output_schema``."""


@dataclass
class AgentLoop:
    """One execution of an agent node: its conversation and what it has done so far."""

    config: AgentConfig
    ctx: NodeContext
    provider: ModelTurns
    specs: list[ToolSpec]
    services: HandlerServices
    named: dict[str, NamedTool]
    """What each tool name the model may call stands for."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    calls: list[CallResult] = field(default_factory=list)
    turns: int = 0
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})
    last: TurnReply | None = None
    streamed: int = 0
    repairs: int = 0
    asking: asyncio.Lock = field(default_factory=asyncio.Lock)
    deadline: asyncio.Timeout | None = None
    """The loop's ``timeout_s``, stopped while a person decides."""
    """``stream:chunk`` events published so far (their index)."""

    async def run(self) -> Completed:
        remembered = await self.step("memory-load", self.load_memory) if self.config.memory else []
        self.messages.extend(remembered)
        self.messages.append({"role": "user", "content": self.config.prompt})
        while True:
            if self.turns >= self.config.max_turns:
                raise limit_error(f"the agent reached max_turns ({self.config.max_turns}) without an answer", self)
            reply = await self.turn()
            if not reply.tool_calls:
                answer = self.checked_answer(reply)
                if answer is not None:
                    if self.config.memory:
                        await self.step("memory-save", self.save_memory)
                    return self.completed(reply, answer)
                continue
            if len(self.calls) + len(reply.tool_calls) > self.config.max_tool_calls:
                raise limit_error(
                    f"the model asked for {len(reply.tool_calls)} more tool calls after {len(self.calls)}: "
                    f"more than max_tool_calls ({self.config.max_tool_calls})",
                    self,
                )
            results = await asyncio.gather(
                *(self.tool_call(call, index) for index, call in enumerate(reply.tool_calls))
            )
            for result in results:
                self.calls.append(result)
                self.messages.append(
                    {"role": "tool", "tool_call_id": result.id, "name": result.name, "content": result.for_model()}
                )

    def memory_place(self) -> tuple[str, str]:
        """Whose memory: the run's owner and workflow (a local run: its workflow's name)."""
        return self.ctx.owner or "", self.ctx.workflow_id or self.ctx.workflow

    async def load_memory(self) -> list[dict[str, Any]]:
        assert self.config.memory is not None
        owner, workflow = self.memory_place()
        return await AgentMemories(self.services.database()).load(owner, workflow, self.config.memory.key)

    async def save_memory(self) -> dict[str, Any]:
        memory = self.config.memory
        assert memory is not None
        owner, workflow = self.memory_place()
        model = self.config.model or self.services.settings.default_model
        kept = await AgentMemories(self.services.database()).save(
            owner, workflow, memory.key, self.messages, memory.max_tokens, model
        )
        return {"messages": kept}

    def checked_answer(self, reply: TurnReply) -> Answer | None:
        """The final answer, its JSON checked against ``output_schema``; None when the model was
        asked to repair it (the error is the next user message); output_invalid after the
        repairs."""
        schema = self.config.output_schema
        if schema is None:
            return Answer(None)
        try:
            return Answer(StructuredOutput(schema).parse(reply.text))
        except InvalidAnswer as problem:
            if self.repairs >= REPAIR_TURNS:
                raise output_invalid(
                    problem, "the agent's answer", {"turns": self.turns, "text": reply.text[:EXCERPT_CHARS]}
                ) from None
            self.repairs += 1
            self.messages.append({"role": "user", "content": repair_message(problem)})
            return None

    async def turn(self) -> TurnReply:
        self.turns += 1
        number = self.turns
        request = TurnRequest(
            model=self.config.model or self.services.settings.default_model,
            system=self.config.system,
            messages=list(self.messages),
            tools=self.specs,
            temperature=float(self.config.temperature) if self.config.temperature is not None else None,
            max_tokens=int(self.config.max_tokens) if self.config.max_tokens is not None else None,
            json_schema=self.config.output_schema,
            timeout_s=float(self.config.timeout_s),
        )

        async def ask() -> dict[str, Any]:
            async with budgeted_request(self.ctx, self.services) as usage:  # checked before every turn
                reply = await self.provider.turn(request, self.stream_text)
                cost = cost_of(dict(reply.usage), request.model, reply.model, prices=self.services.settings.llm_prices)
                record_usage(usage, dict(reply.usage), cost)
            self.ctx.emit("agent:turn", {"turn": number, "usage": dict(reply.usage)})
            return reply.as_json()

        reply = TurnReply.from_json(await self.step(f"turn-{number}", ask))
        self.last = reply
        for key in ("input_tokens", "output_tokens"):
            self.usage[key] += int(reply.usage.get(key, 0))
        self.messages.append(
            {"role": "assistant", "content": reply.text, "tool_calls": [c.as_json() for c in reply.tool_calls]}
        )
        return reply

    async def tool_call(self, call: ToolCall, index: int) -> CallResult:
        async def run_call() -> dict[str, Any]:
            approved = await self.approval(call) if call.name in self.config.require_approval else call
            if isinstance(approved, CallResult):  # refused: the refusal is the result
                self.ctx.emit(
                    "agent:tool_result", {"call_id": call.id, "tool": call.name, "status": "refused", "duration_ms": 0}
                )
                return approved.as_json()
            self.ctx.emit("agent:tool_call", {"call_id": call.id, "tool": call.name, "arguments": approved.arguments})
            result = await call_tool(self.named.get(call.name), approved, self.ctx)
            status = "error" if result.error is not None else "ok"
            self.ctx.emit(
                "agent:tool_result",
                {"call_id": call.id, "tool": call.name, "status": status, "duration_ms": result.duration_ms},
            )
            return result.as_json()

        return CallResult.from_json(await self.step(f"turn-{self.turns}-call-{index}", run_call))

    async def approval(self, call: ToolCall) -> ToolCall | CallResult:
        """Ask a person about ``call``: the call to make (with edited arguments if they gave
        some), or its refusal as the result the model reads. One at a time: a run shows one
        pending approval per node."""
        request = ToolCallApproval(
            message=f"The agent wants to call {call.name}.",
            form={
                "arguments": FormField(type="object", description="Edited arguments; the model's when left out."),
                "message": FormField(type="string", description="Why (told to the model when you reject)."),
            },
            step=f"call-{call.id}",
            tool=call.name,
            arguments=call.arguments,
            approvers=self.config.approvers,
            required=self.config.required,
            allow_self_approval=self.config.allow_self_approval,
        )
        async with self.asking, self.stopped_clock():
            decision = await self.ctx.capabilities.pause_for_person(request)
        answer = decision.output if isinstance(decision.output, dict) else {}
        values = answer.get("input") or {}
        if answer.get("approved"):
            edited = values.get("arguments")
            return ToolCall(call.id, call.name, dict(edited)) if isinstance(edited, dict) else call
        why = values.get("message") or ("no decision in time" if answer.get("timed_out") else "no reason given")
        return CallResult(call.id, call.name, call.arguments, None, f"a person refused this call: {why}", 0)

    @contextlib.asynccontextmanager
    async def stopped_clock(self) -> AsyncIterator[None]:
        """``timeout_s`` does not count the time a person takes to decide."""
        deadline, clock = self.deadline, asyncio.get_running_loop()
        when = deadline.when() if deadline is not None else None
        if deadline is None or when is None:
            yield
            return
        left = when - clock.time()
        deadline.reschedule(None)
        try:
            yield
        finally:
            deadline.reschedule(clock.time() + left)

    async def step(self, name: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        return await self.ctx.capabilities.journal_step(name, compute)

    def stream_text(self, text: str) -> None:
        self.ctx.emit("stream:chunk", {"index": self.streamed, "text": text, "attempt": self.ctx.attempt})
        self.streamed += 1

    def completed(self, reply: TurnReply, answer: Answer) -> Completed:
        model = reply.model or self.config.model or self.services.settings.default_model
        cost = cost_of(dict(self.usage), model, self.config.model, prices=self.services.settings.llm_prices)
        output: dict[str, Any] = {
            "text": reply.text,
            **({"json": answer.json} if self.config.output_schema is not None else {}),
            "tool_calls": [c.as_json() for c in self.calls],
            "turns": self.turns,
            "usage": dict(self.usage),
            "cost_usd": cost,
            "model": model,
            "finish_reason": reply.finish_reason,
        }
        totals: dict[str, Any] = {**self.usage, "model": model}  # the model: for metrics and traces
        if cost is not None:
            totals["cost_usd"] = cost
        return Completed(output=output, usage=totals)


def limit_error(message: str, loop: AgentLoop) -> NodeError:
    return NodeError(
        message,
        error_type=LIMIT,
        details={"turns": loop.turns, "tool_calls": len(loop.calls), "usage": dict(loop.usage)},
    )


HANDLERS = [AgentHandler]
