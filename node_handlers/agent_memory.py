"""An agent's memory: its conversation under a key, per owner and workflow, kept in
FlowMaestro's own database (table ``agent_memories``), never in Prefect.

Loaded before the first turn (the earlier messages go before the new prompt), saved after
the last (the whole conversation: earlier messages, the prompt, every turn and tool result),
trimmed to ``max_tokens`` oldest exchange first. An exchange is a user message and what
followed it up to the next one, so a tool result never outlives the call it answers.

Tokens are estimated, not counted with a tokenizer: 4 characters a token over each
message as JSON. No model's own tokenizer ships with its data on this machine (OpenAI's
``tiktoken`` downloads its tables on first use), and an estimate that is the same for every
provider keeps trimming predictable. It overestimates English prose slightly, so a memory
trimmed to ``max_tokens`` fits in that many real tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from store.database import utcnow
from store.db import AgentMemoryRow, sessions

CHARS_PER_TOKEN = 4


class MemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=200, description="Whose conversation; usually a template.")
    max_tokens: int = Field(4000, ge=1, description="The most tokens kept (estimated); the oldest exchanges go first.")


def tokens_of(messages: Sequence[dict[str, Any]]) -> int:
    return sum(math.ceil(len(json.dumps(m, default=str)) / CHARS_PER_TOKEN) for m in messages)


def trimmed(messages: Sequence[dict[str, Any]], max_tokens: int) -> list[dict[str, Any]]:
    """``messages`` without their oldest exchanges, until they fit in ``max_tokens``."""
    starts = [i for i, m in enumerate(messages) if m.get("role") == "user"] or [0]
    for start in starts:
        kept = list(messages[start:])
        if tokens_of(kept) <= max_tokens:
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
        self, owner: str, workflow_id: str, key: str, messages: Sequence[dict[str, Any]], max_tokens: int
    ) -> int:
        """Keep ``messages`` trimmed to ``max_tokens``; how many were kept."""
        kept = trimmed(messages, max_tokens)
        tokens = tokens_of(kept)
        async with self.session() as session, session.begin():
            row = await session.get(AgentMemoryRow, (owner, workflow_id, key), with_for_update=True)
            if row is None:
                session.add(AgentMemoryRow(owner=owner, workflow_id=workflow_id, key=key, messages=kept, tokens=tokens))
            else:
                row.messages, row.tokens, row.updated_at = kept, tokens, utcnow()
        return len(kept)
