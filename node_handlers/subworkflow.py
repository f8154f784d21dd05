"""The subworkflow node: runs another workflow as a child run."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from builder.catalog import NodeConfig
from node_handlers.base import ERROR_HANDLE, Completed, HandleDoc, NodeContext, NodeHandler


class SubworkflowConfig(NodeConfig):
    workflow: str = Field(min_length=1, description="Saved workflow id, or a canvas file path for the CLI.")
    version: int | None = Field(None, ge=1, description="Version to run; the latest when absent.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Inputs of the child run; templates.")


class SubworkflowHandler(NodeHandler):
    type = "subworkflow"
    category = "logic"
    side_effects = True  # starts a child run
    handle_docs = (HandleDoc("source", "Fires when the child run completed; the output is its output."), ERROR_HANDLE)
    description = "Runs another workflow as a child Prefect flow run; its output is the child's output."
    Config = SubworkflowConfig
    cacheable = False
    in_flow = True

    async def run(self, config: SubworkflowConfig, ctx: NodeContext) -> Completed:
        # The run starts the child (flows/subworkflows.py): it is a subflow run of this one.
        return await ctx.capabilities.start_child_run(config.workflow, config.version, config.inputs)


HANDLERS = [SubworkflowHandler]
