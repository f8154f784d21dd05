"""Core nodes: start, end, transform, merge, set_variable.

They are pure and fast (``control = True``): the engine may run them without a full
Prefect task run while still recording them in Prefect.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from builder.catalog import IDENTIFIER_PATTERN, NodeConfig
from node_handlers.base import ERROR_HANDLE, SOURCE, SOURCE_HANDLE, Completed, HandleDoc, NodeContext, NodeHandler


class StartHandler(NodeHandler):
    type = "start"
    category = "core"
    side_effects = False
    handle_docs = (HandleDoc("source", "Fires when the run starts; the output is the run's inputs."),)
    description = "Entry point; its output is the run inputs."
    control = True

    def handles(self, config: NodeConfig) -> frozenset[str]:
        return SOURCE

    async def run(self, config: NodeConfig, ctx: NodeContext) -> Completed:
        return Completed(output=dict(ctx.inputs))


class EndConfig(NodeConfig):
    output: Any = Field(
        None,
        description="Template of the result. Without it, the end node passes on "
        "its upstream output (one upstream) or a mapping of them.",
    )


class EndHandler(NodeHandler):
    type = "end"
    category = "core"
    side_effects = False
    handle_docs = ()
    description = "Marks a result of the workflow."
    Config = EndConfig
    control = True
    terminal = True

    def handles(self, config: NodeConfig) -> frozenset[str]:
        return frozenset()

    async def run(self, config: EndConfig, ctx: NodeContext) -> Completed:
        if "output" in config.model_fields_set:
            return Completed(output=config.output, handles=frozenset())
        upstream = dict(ctx.upstream)
        output = next(iter(upstream.values())) if len(upstream) == 1 else upstream
        return Completed(output=output, handles=frozenset())


class TransformConfig(NodeConfig):
    output: Any = Field(description="JSON template of the output; strings are templates.")


class TransformHandler(NodeHandler):
    type = "transform"
    category = "data"
    side_effects = False
    handle_docs = (SOURCE_HANDLE, ERROR_HANDLE)
    description = "Builds JSON from a template."
    Config = TransformConfig
    control = True

    async def run(self, config: TransformConfig, ctx: NodeContext) -> Completed:
        return Completed(output=config.output)


class MergeHandler(NodeHandler):
    type = "merge"
    category = "data"
    side_effects = False
    handle_docs = (SOURCE_HANDLE,)
    description = "Joins branches; output maps each fired source node to its output."
    control = True
    reads_upstream = True

    def handles(self, config: NodeConfig) -> frozenset[str]:
        return SOURCE

    async def run(self, config: NodeConfig, ctx: NodeContext) -> Completed:
        return Completed(output=dict(ctx.upstream))


_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


class SetVariableConfig(NodeConfig):
    name: str = Field(
        description="Variable to set; read it as var.<name>.", json_schema_extra={"pattern": IDENTIFIER_PATTERN}
    )
    value: Any = Field(None, description="New value; strings are templates.")

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not _IDENTIFIER.match(name):
            raise ValueError("a variable name is letters, digits and underscores, not starting with a digit")
        return name


class SetVariableHandler(NodeHandler):
    type = "set_variable"
    category = "data"
    side_effects = True  # changes the run's variables
    handle_docs = (SOURCE_HANDLE,)
    description = "Sets var.<name> for the nodes that run after it."
    Config = SetVariableConfig
    cacheable = False
    control = True

    def handles(self, config: NodeConfig) -> frozenset[str]:
        return SOURCE

    async def run(self, config: SetVariableConfig, ctx: NodeContext) -> Completed:
        return Completed(output=config.value, variables={config.name: config.value})


HANDLERS = [StartHandler, EndHandler, TransformHandler, MergeHandler, SetVariableHandler]
