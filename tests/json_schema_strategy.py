"""A Hypothesis strategy for instances of the node catalog's JSON Schemas.

``hypothesis-jsonschema`` (the library for this) 0.23.1, its latest release, fails on the
Hypothesis this project pins (``AttributeError: 'many' object has no attribute 'more'``
inside its array strategy), so this module generates instances itself, for the keywords
pydantic publishes and the catalog's annotations (``builder.catalog``: x-unique-keys,
x-not-above, x-names-from, x-expression, x-source-code, x-json-schema). Every instance is
checked against the whole schema with ``jsonschema`` (``oneOf``, ``not``, ``if``/``then``): the generator only aims, the
validator decides, so nothing the schema refuses is ever drawn.

What JSON Schema cannot say about text is drawn from small valid sets: a template field
gets a template about the canvas's declared inputs (``TEMPLATES``), an expression field an
expression (``EXPRESSIONS``), a program field a program (``PROGRAMS``), a JSON Schema field a
schema (``JSON_SCHEMAS``); other text has no
``{`` (text with one is a template, whose content is the compiler's business, like the
graph's rules).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from builder.catalog import (
    EXPRESSION,
    JSON_SCHEMA,
    NAMES_FROM,
    NOT_ABOVE,
    SOURCE_CODE,
    TEMPLATE_JSON_SCHEMA,
    UNIQUE_KEYS,
)

INPUTS = {"n": {"type": "integer", "default": 2}, "items": {"type": "array", "default": [1, 2]}}
"""The run inputs a generated canvas declares, which its templates read."""
TEMPLATES = ["{{ inputs.n }}", "{{ inputs.items }}", "{{ inputs }}"]
EXPRESSIONS = ["inputs.n > 0", "true", "1 < 2", "{{ inputs.n > 1 }}"]
JSON_SCHEMAS = [
    {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
    {"type": "array", "items": {"type": "integer"}},
    {"type": "string", "enum": ["yes", "no"]},
    {},
]
"""What a field annotated as a JSON Schema is drawn from."""
PROGRAMS = [
    "def main(inputs):\n    return inputs\n",
    "def main(inputs):\n    return {'n': 1}  # {{ not a template }}\n",
]
"""Programs valid in Python (and, as far as the compiler checks, in JavaScript: not at all)."""

plain_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="{}"), max_size=12)
json_atoms = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | plain_text
)
json_values = st.recursive(
    json_atoms,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain_text, inner, max_size=3),
    max_leaves=6,
)


def instances(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Instances of ``schema`` (a self-contained schema: its ``$defs`` inside)."""
    validator = Draft202012Validator(schema)
    return _Generator(schema).of(schema).filter(validator.is_valid)


class _Generator:
    def __init__(self, root: dict[str, Any]):
        self.root = root

    def of(self, schema: dict[str, Any] | bool) -> st.SearchStrategy[Any]:
        if schema is True or schema == {}:
            return json_values
        assert isinstance(schema, dict), schema
        if "$ref" in schema:
            name = schema["$ref"].removeprefix("#/$defs/")
            return self.of(self.root["$defs"][name])
        if schema.get(EXPRESSION):
            return st.sampled_from(EXPRESSIONS) | st.booleans()
        if schema.get(SOURCE_CODE):
            return st.sampled_from(PROGRAMS)
        if schema.get(JSON_SCHEMA):
            return st.sampled_from(JSON_SCHEMAS)
        if schema.get("pattern") == TEMPLATE_JSON_SCHEMA["pattern"]:
            return st.sampled_from(TEMPLATES)
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema and "type" not in schema:
                return st.one_of([self.of(branch) for branch in schema[combinator]])
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            return self._object(schema)
        if kind == "array":
            return self._array(schema)
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return self._number(schema, kind)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return json_values  # no type: any JSON (a field of type Any)

    def _string(self, schema: dict[str, Any]) -> st.SearchStrategy[str]:
        if schema.get("format") == "date-time":
            return st.datetimes().map(lambda moment: moment.isoformat())
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True, alphabet=st.characters(codec="ascii"))
        return plain_text.filter(lambda text: len(text) >= schema.get("minLength", 0))

    def _number(self, schema: dict[str, Any], kind: str) -> st.SearchStrategy[Any]:
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(10**6)))
        high = schema.get("maximum", schema.get("exclusiveMaximum", 10**6))
        if kind == "integer":
            return st.integers(int(low), int(high))
        return st.floats(low, high, allow_nan=False, allow_infinity=False) | st.integers(int(low) + 1, int(high) - 1)

    def _array(self, schema: dict[str, Any]) -> st.SearchStrategy[list[Any]]:
        items = self.of(schema.get("items", {}))
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", low + 3), low + 3)
        unique = schema.get(UNIQUE_KEYS)
        if unique:
            return st.lists(items, min_size=low, max_size=high, unique_by=tuple(_key(k) for k in unique))
        return st.lists(items, min_size=low, max_size=high)

    def _object(self, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        if not properties:
            extra = schema.get("additionalProperties", True)
            names = (
                self._string({"type": "string", **schema["propertyNames"]}) if "propertyNames" in schema else plain_text
            )
            return st.dictionaries(names, self.of(extra if isinstance(extra, dict) else {}), max_size=3)

        @st.composite
        def draw_object(draw: st.DrawFn) -> dict[str, Any]:
            out = {}
            for name, field in properties.items():
                if name in required or draw(st.booleans()):
                    out[name] = draw(self.of(field))
            return out

        not_above = schema.get(NOT_ABOVE, {})
        names_from = schema.get(NAMES_FROM, {})
        return draw_object().filter(
            lambda value: _within(value, not_above, properties) and names_known(value, names_from)
        )


def _key(name: str) -> Any:
    return lambda item: item.get(name) if isinstance(item, dict) else item


def _within(value: dict[str, Any], not_above: dict[str, str], properties: dict[str, Any]) -> bool:
    """The ``x-not-above`` rule: ``field`` (a number, or an array's length) is at most ``other``."""
    for field, other in not_above.items():
        size = value.get(field)
        size = len(size) if isinstance(size, list) else size
        limit = value.get(other, properties.get(other, {}).get("default"))
        if isinstance(size, int) and isinstance(limit, int) and size > limit:
            return False
    return True


def names_known(value: dict[str, Any], names_from: dict[str, list[str]]) -> bool:
    """The ``x-names-from`` rule: every name of ``field`` is a key of an item of ``array``."""
    for field, (array, *keys) in names_from.items():
        known: set[str] = set()
        for item in value.get(array) or []:
            for key in keys:
                found = item.get(key) if isinstance(item, dict) else None
                known |= {found} if isinstance(found, str) else {n for n in found or () if isinstance(n, str)}
        if not set(value.get(field) or ()) <= known:
            return False
    return True
