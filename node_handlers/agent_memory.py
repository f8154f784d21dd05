"""An agent's memory: its conversation under a key, per owner and workflow, kept in
FlowMaestro's own database (table ``agent_memories``), never in Prefect.

Loaded before the first turn (the earlier messages go before the new prompt), saved after
the last (the whole conversation: earlier messages, the prompt, every turn and tool result),
trimmed to ``max_tokens`` oldest exchange first. An exchange is a user message and what
followed it up to the next one, so a tool result never outlives the call it answers.

Tokens are counted with the model's own tokenizer where FlowMaestro ships it
(``node_handlers.token_counts``: cl100k_base, for gpt-4, gpt-4-turbo and gpt-3.5-turbo),
and estimated otherwise: 4 characters a token over each message as JSON, which
overestimates English prose slightly, so a memory trimmed to ``max_tokens`` fits in that
many real tokens.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from node_handlers.token_counts import message_tokens, text_counter
from store.database import utcnow
from store.db import AgentMemoryRow, sessions

CHARS_PER_TOKEN = 4


class MemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=200, description="Whose conversation; usually a template.")
    max_tokens: int = Field(
        4000,
        ge=1,
        description="The most tokens kept (the model's tokenizer where known, else estimated); the oldest "
        "exchanges go first.",
    )


def tokens_of(messages: Sequence[dict[str, Any]], model: str | None = None) -> int:
    how, count = text_counter(model)
    if how == "estimate":
        return sum(math.ceil(len(json.dumps(m, default=str)) / CHARS_PER_TOKEN) for m in messages)
    return sum(message_tokens(m, count) for m in messages)


def trimmed(messages: Sequence[dict[str, Any]], max_tokens: int, model: str | None = None) -> list[dict[str, Any]]:
    """``messages`` without their oldest exchanges, until they fit in ``max_tokens``."""
    starts = [i for i, m in enumerate(messages) if m.get("role") == "user"] or [0]
    for start in starts:
        kept = list(messages[start:])
        if tokens_of(kept, model) <= max_tokens:
            return kept
    return []  # even the last exchange alone is too large


class AgentMemories:
    def __init__(self, engine: AsyncEngine):
        self.session = sessions(engine)

    async def load(self, owner: str, workflow_id: str, key: str) -> list[dict[str, Any]]:
        async with self.session() as session:
            row = await session.get(AgentMemoryRow, (owner, workflow_id, key))
            return list(row.messages) if row is not None else []

    async def save(
        self,
        owner: str,
        workflow_id: str,
        key: str,
        messages: Sequence[dict[str, Any]],
        max_tokens: int,
        model: str | None = None,
    ) -> int:
        """Keep ``messages`` trimmed to ``max_tokens`` (counted for ``model``); how many were kept."""
        # In a thread: tokenizing is CPU work (and the first use loads the tokenizer's table).
        kept = await asyncio.to_thread(trimmed, messages, max_tokens, model)
        tokens = await asyncio.to_thread(tokens_of, kept, model)
        async with self.session() as session, session.begin():
            row = await session.get(AgentMemoryRow, (owner, workflow_id, key), with_for_update=True)
            if row is None:
                session.add(AgentMemoryRow(owner=owner, workflow_id=workflow_id, key=key, messages=kept, tokens=tokens))
            else:
                row.messages, row.tokens, row.updated_at = kept, tokens, utcnow()
        return len(kept)
