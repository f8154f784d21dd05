"""What the compiler needs to know about node types, as a protocol.

``builder`` never imports ``node_handlers``: the caller passes a catalog (the real
registry, or a small fake in tests), which keeps the compiler pure.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError, core_schema

from builder.plan import CachePolicy, RetryPolicy
from builder.templates import is_template

ContainerKind = Literal["loop", "parallel"]


class NodeConfig(BaseModel):
    """Base of every handler's configuration model (a node's ``data``).

    Unknown keys are kept (frontends store their own things in ``data``) and reported
    as warnings by the compiler.
    """

    model_config = ConfigDict(extra="allow")
    label: str | None = None
    description: str | None = None


# Rules of a node's data that standard JSON Schema cannot state, written into the published
# schemas as annotations (validators ignore unknown keywords; docs/node-catalog.md). The
# compiler enforces them; a form may too.
UNIQUE_KEYS = "x-unique-keys"
"""On an array of objects: the listed keys of its items are unique (ids that name handles)."""
NOT_ABOVE = "x-not-above"
"""On an object: ``{field: other}``, the number ``field`` (or its array's length) is at most
the number ``other`` (its default when absent), e.g. a loop's count and its max_iterations."""
NAMES_FROM = "x-names-from"
"""On an object: ``{field: [array, key, ...]}``, every string of the array ``field`` is one
of the ``key``s (a string, or a list of strings) of the items of the array ``array``, e.g.
the tools an agent's require_approval names."""
SOURCE_CODE = "x-source-code"
"""On a field: its text is a program in the language the object's ``language`` names (a code
editor fits); the compiler checks a Python program's syntax."""
EXPRESSION = "x-expression"
"""On a field: text there is an expression (``inputs.score > 0.5``), not a template."""
JSON_SCHEMA = "x-json-schema"
"""On a field: its object is a JSON Schema (the answer's shape of a model node); the compiler
checks it is a valid one that fetches nothing (no remote ``$ref``)."""
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def not_null(*names: str) -> dict[str, Any]:
    """JSON Schema: each of ``names`` is given, and not null (what ``is not None`` checks)."""
    return {"required": list(names), "properties": {name: {"not": {"type": "null"}} for name in names}}


def exactly_one_of(*names: str) -> dict[str, Any]:
    """JSON Schema: exactly one of ``names`` is given and not null."""
    return {"oneOf": [not_null(name) for name in names]}


def at_most_one_of(*names: str) -> dict[str, Any]:
    """JSON Schema: no two of ``names`` are given and not null."""
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    return {"not": {"anyOf": [not_null(a, b) for a, b in pairs]}}


def _must_be_template(text: str) -> str:
    if not is_template(text):
        raise ValueError("expected a template such as '{{ inputs.count }}'")
    return text


TEMPLATE_JSON_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"\{\{|\{%",
    "description": "A template, computed when the node runs, e.g. '{{ inputs.x }}'.",
}
"""JSON Schema of a template string: text holding ``{{`` or ``{%``."""

TemplateStr = Annotated[str, AfterValidator(_must_be_template), WithJsonSchema(TEMPLATE_JSON_SCHEMA)]
"""A string that is a template: allowed where a field may be computed at run time."""

_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "decimal_parsing": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "list_type": "an array",
    "tuple_type": "an array",
    "set_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "string_type": "a string",
    "none_required": "null",
}


def expected_kind(error: Any) -> str:
    """What a failed pydantic check wanted, in a few words ("an integer", "'GET' or
    'POST'"); its message when there is no shorter way to say it."""
    if error["type"] in ("literal_error", "enum") and "expected" in (error.get("ctx") or {}):
        return str(error["ctx"]["expected"])
    return _EXPECTED.get(error["type"]) or str(error["msg"])


def template_hint(field_name: str | None) -> str:
    name = field_name if field_name and field_name.isidentifier() else "value"
    return f"a template such as '{{{{ inputs.{name} }}}}'"


def _templatable(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    if isinstance(value, str) and is_template(value):
        return value  # computed at run time; the handler checks the value it gives then
    try:
        return handler(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if not (isinstance(value, str) and len(errors) == 1 and not errors[0]["loc"]):
            raise  # the value's own problems, where they are
        # Text that is neither a value of the type nor a template: one error, in words.
        raise PydanticCustomError(
            "templatable", f"expected {expected_kind(errors[0])}, or {template_hint(info.field_name)}"
        ) from None


def _serialize_templatable(value: Any, handler: core_schema.SerializerFunctionWrapHandler) -> Any:
    return value if isinstance(value, str) and is_template(value) else handler(value)


class _TemplateOr:
    """``Annotated`` marker behind :data:`Templatable`: validates with the wrapped type
    unless the value is a template, and publishes ``anyOf: [type, template]``."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        inner = handler(source)
        return core_schema.with_info_wrap_validator_function(
            _templatable,
            inner,
            serialization=core_schema.wrap_serializer_function_ser_schema(_serialize_templatable, schema=inner),
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {"anyOf": [handler(schema), dict(TEMPLATE_JSON_SCHEMA)]}

    def __repr__(self) -> str:
        return "TemplateOr()"


T = TypeVar("T")
Templatable = Annotated[T, _TemplateOr()]
"""``Templatable[int]``: a number, or a template giving one at run time. A string that is
neither earns one error on the field ("expected an integer, or a template such as
'{{ inputs.count }}'"), not one per alternative."""


@dataclass(frozen=True)
class NodeTypeSpec:
    """The static description of a node type."""

    type: str
    config_model: builtins.type[NodeConfig]  # `type` above is a field
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
    literal_keys: frozenset[str] = frozenset()
    """Keys in ``data`` taken as written: not templates (a code node's ``code``)."""
    terminal: bool = False
    """True for ``end``: offers no handles, marks a result."""


class NodeCatalog(Protocol):
    def spec(self, node_type: str) -> NodeTypeSpec | None: ...

    def types(self) -> Iterable[str]: ...
