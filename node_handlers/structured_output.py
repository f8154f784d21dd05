"""Structured output: a model's answer as JSON valid against a JSON Schema (``output_schema``
of ``llm`` and ``agent``, the route choice of ``router``).

Each protocol is asked in its own JSON-schema mode: OpenAI's ``response_format: {type:
json_schema, json_schema: {name, schema, strict}}`` and, on Anthropic's Messages, a tool
whose ``input_schema`` is the schema that the model is made to call (``tool_choice``). Both
want an object at the root: any other schema travels wrapped as ``{"value": <schema>}``
and is unwrapped here. ``strict`` is asked only of a schema OpenAI's strict mode accepts
(every object closed with ``additionalProperties: false`` and all its properties
required); OpenAI refuses the request otherwise.

Whatever the provider promises, the answer is validated here. A caller that gets an
``InvalidAnswer`` sends the model ``repair_message`` and asks again, ``REPAIR_TURNS`` times
at most, then fails the node with ``output_invalid``.

Schemas come from canvases, so they may only refer inside themselves (``#...``): the
validator never fetches a remote ``$ref`` (jsonschema's default would, from the worker,
around the egress policy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from jsonschema import exceptions as jsonschema_exceptions
from jsonschema.validators import validator_for
from jsonschema_specifications import REGISTRY as METASCHEMAS
from pydantic import AfterValidator, Field
from referencing.exceptions import Unresolvable

from builder.catalog import JSON_SCHEMA
from node_handlers.base import NodeError

REPAIR_TURNS = 2
"""Times an answer that does not fit is sent back to the model to be fixed (platform contract)."""
OUTPUT_INVALID = "output_invalid"
ANSWER_TOOL = "final_answer"
"""The tool an Anthropic model calls with its answer."""
WRAPPED_KEY = "value"
EXCERPT_CHARS = 200
_FENCED = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` if it is a JSON Schema the node can use; a ValueError saying what is wrong
    (the compiler names the node and the field)."""
    try:
        validator_for(schema).check_schema(schema)
    except jsonschema_exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise ValueError(f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}") from None
    remote = sorted({ref for ref in _refs(schema) if not ref.startswith("#")})
    if remote:
        raise ValueError(f"$ref may only point inside the schema (#/...); not: {', '.join(remote)}")
    return schema


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("$ref", "$dynamicRef") and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


OutputSchema = Annotated[dict[str, Any], AfterValidator(check_schema), Field(json_schema_extra={JSON_SCHEMA: True})]


class InvalidAnswer(Exception):
    """The model's answer is not JSON, or does not fit the schema; ``reason`` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StructuredOutput:
    schema: Mapping[str, Any]
    name: str = "answer"
    """The schema's name in OpenAI's response_format."""

    @property
    def wrapped(self) -> bool:
        return self.schema.get("type") != "object"

    @property
    def wire_schema(self) -> dict[str, Any]:
        """The schema as the provider gets it: an object at the root."""
        if not self.wrapped:
            return dict(self.schema)
        inner = {k: v for k, v in self.schema.items() if k not in ("$schema", "$defs", "definitions")}
        wrapped: dict[str, Any] = {
            "type": "object",
            "properties": {WRAPPED_KEY: inner},
            "required": [WRAPPED_KEY],
            "additionalProperties": False,
        }
        # Local references (#/$defs/...) stay valid when their definitions stay at the root.
        wrapped.update({k: self.schema[k] for k in ("$defs", "definitions") if k in self.schema})
        return wrapped

    @property
    def strict(self) -> bool:
        return strict_compatible(self.wire_schema)

    def openai_response_format(self) -> dict[str, Any]:
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.wire_schema, "strict": self.strict},
        }

    def anthropic_tool(self, name: str = ANSWER_TOOL) -> dict[str, Any]:
        return {
            "name": name,
            "description": "Give your final answer: call this tool with it as the input.",
            "input_schema": self.wire_schema,
        }

    def parse(self, text: str) -> Any:
        """The answer in ``text``, unwrapped and valid against the schema; else InvalidAnswer."""
        match = _FENCED.match(text)
        try:
            value = json.loads(match.group(1) if match else text)
        except ValueError as exc:  # a JSONDecodeError, or a plain ValueError (an integer past 4,300 digits)
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise InvalidAnswer(f"the answer is not valid JSON ({reason}): {text[:EXCERPT_CHARS]!r}") from None
        if self.wrapped and isinstance(value, dict) and set(value) == {WRAPPED_KEY}:
            value = value[WRAPPED_KEY]
        problem = schema_problem(self.schema, value)
        if problem is not None:
            raise InvalidAnswer(problem)
        return value


def schema_problem(schema: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` does not fit ``schema`` (the most relevant error), or None."""
    validator = validator_for(schema)(schema, registry=METASCHEMAS)
    try:
        error = jsonschema_exceptions.best_match(validator.iter_errors(value))
    except Unresolvable as exc:
        return f"the schema has a reference that cannot be resolved: {exc}"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the answer"
    return f"the JSON does not fit the schema at {where}: {error.message}"


def strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict mode takes ``schema``: every object lists all its properties
    as required and allows no others."""
    if isinstance(schema, list):
        return all(strict_compatible(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or ()) != set(properties):
            return False
    return all(strict_compatible(v) for k, v in schema.items() if k not in ("enum", "const", "default", "examples"))


def repair_message(problem: InvalidAnswer) -> str:
    return f"Your answer is not valid: {problem.reason}. Answer again with JSON only, valid against the schema."


def output_invalid(problem: InvalidAnswer, what: str, details: dict[str, Any]) -> NodeError:
    """The node error once the repairs are spent."""
    return NodeError(
        f"{what} does not fit output_schema after {REPAIR_TURNS} repair turns: {problem.reason}",
        error_type=OUTPUT_INVALID,
        details=details,
    )
