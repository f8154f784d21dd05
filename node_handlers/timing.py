"""The delay node."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from pydantic import ConfigDict, Field, model_validator

from builder.catalog import NodeConfig, Templatable, exactly_one_of
from node_handlers.base import SOURCE, Completed, HandleDoc, NodeContext, NodeError, NodeHandler

MAX_DELAY_S = 30 * 24 * 3600


class DelayConfig(NodeConfig):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("seconds", "until"))
    seconds: Templatable[float] | None = Field(None, description="How long to wait.")
    until: Templatable[datetime] | None = Field(None, description="ISO 8601 time to wait for (UTC if no zone).")

    @model_validator(mode="after")
    def _one_of(self) -> DelayConfig:
        if (self.seconds is None) == (self.until is None):
            raise ValueError("give exactly one of 'seconds' or 'until'")
        return self


class DelayHandler(NodeHandler):
    type = "delay"
    category = "logic"
    side_effects = True  # holds the run (never cached)
    handle_docs = (HandleDoc("source", "Fires when the wait is over."),)
    description = "Waits a number of seconds or until a time."
    Config = DelayConfig
    cacheable = False
    resumes_waiting = True
    inline = True  # it only waits: no task run of its own needed

    def handles(self, config: NodeConfig) -> frozenset[str]:
        return SOURCE

    async def run(self, config: DelayConfig, ctx: NodeContext) -> Completed:
        if config.until is not None:
            until = config.until if config.until.tzinfo else config.until.replace(tzinfo=UTC)
            wait = (until - datetime.now(UTC)).total_seconds()
        else:
            wait = float(config.seconds)  # type: ignore[arg-type]
            if ctx.first_started is not None:  # executed again: only what is left
                wait -= (datetime.now(UTC) - ctx.first_started).total_seconds()
        wait = max(0.0, wait)
        if wait > MAX_DELAY_S:
            raise NodeError(f"a delay of {wait:.0f} s is longer than the 30-day limit")
        started = time.monotonic()
        if wait > 0:  # a long wait lets go of the run when it may: it comes back for what is left
            await ctx.release_until(datetime.now(UTC) + timedelta(seconds=wait))
        await asyncio.sleep(wait)
        return Completed(output={"waited_s": round(time.monotonic() - started, 3)})


HANDLERS = [DelayHandler]
