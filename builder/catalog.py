"""What the compiler needs to know about node types, as a protocol.

``builder`` never imports ``node_handlers``: the caller passes a catalog (the real
registry, or a small fake in tests), which keeps the compiler pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Literal, Protocol, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from builder.plan import CachePolicy, RetryPolicy

ContainerKind = Literal["loop", "parallel"]


class NodeConfig(BaseModel):
    """Base of every handler's configuration model (a node's ``data``).

    Unknown keys are kept (frontends store their own things in ``data``) and reported
    as warnings by the compiler.
    """

    model_config = ConfigDict(extra="allow")
    label: str | None = None
    description: str | None = None


def _must_be_template(text: str) -> str:
    if "{{" not in text and "{%" not in text:
        raise ValueError("expected a template such as '{{ inputs.count }}'")
    return text


TemplateStr = Annotated[str, AfterValidator(_must_be_template)]
"""A string that is a template: allowed where a field may be computed at run time."""

T = TypeVar("T")
Templatable = T | TemplateStr  # e.g. Templatable[int]: a number, or a template giving one


@dataclass(frozen=True)
class NodeTypeSpec:
    """The static description of a node type."""

    type: str
    config_model: type[NodeConfig]
    handles: Callable[[NodeConfig], frozenset[str]]
    """Source handles a node of this type offers, given its validated configuration."""
    version: str = "1"
    description: str = ""
    container: ContainerKind | None = None
    default_retry: RetryPolicy = field(default_factory=RetryPolicy)
    default_cache: CachePolicy = field(default_factory=CachePolicy)
    cacheable: bool = True
    """False for handlers with side effects (approval, delay, set_variable)."""
    expression_keys: frozenset[str] = frozenset()
    """Keys in ``data`` whose strings are expressions (``score > 0.5``) rather than templates."""
    own_scope_keys: frozenset[str] = frozenset()
    """Keys of a container's ``data`` evaluated inside its own iteration (a loop's
    ``condition`` sees ``loop.*`` of that loop); the rest is evaluated before it starts."""
    terminal: bool = False
    """True for ``end``: offers no handles, marks a result."""


class NodeCatalog(Protocol):
    def spec(self, node_type: str) -> NodeTypeSpec | None: ...

    def types(self) -> Iterable[str]: ...
