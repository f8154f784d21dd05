"""The subworkflow node: runs another workflow as a child run."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from builder.catalog import NodeConfig
from node_handlers.base import Completed, NodeContext, NodeError, NodeHandler


class SubworkflowConfig(NodeConfig):
    workflow: str = Field(min_length=1, description="Saved workflow id, or a canvas file path for the CLI.")
    version: int | None = Field(None, ge=1, description="Version to run; the latest when absent.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Inputs of the child run; templates.")


class SubworkflowHandler(NodeHandler):
    type = "subworkflow"
    description = "Runs another workflow as a child Prefect flow run; its output is the child's output."
    Config = SubworkflowConfig
    cacheable = False

    async def run(self, config: SubworkflowConfig, ctx: NodeContext) -> Completed:
        # The engine runs child workflows itself (flows/subworkflows.py); this runs only
        # where no engine is there to do it.
        raise NodeError("subworkflow nodes run only inside a Prefect flow run (flowmaestro run, or the API)")


HANDLERS = [SubworkflowHandler]
