"""The JSON types a canvas names, and which values have them.

Run inputs and approval form fields are declared with one of :data:`JsonType`; the
``type_is`` edge condition also accepts ``null``. One definition, so that a value an input
accepts as an ``integer`` is one ``type_is`` calls an ``integer`` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

JsonType = Literal["string", "number", "integer", "boolean", "object", "array"]
"""What a run input or an approval form field may be declared as."""

JSON_TYPES: tuple[str, ...] = (*get_args(JsonType), "null")
"""Every JSON type name, ``null`` included."""


def type_name(value: Any) -> str:
    """The JSON type name of ``value``: null, boolean, number, string, array or object.

    Integers and floats are both "number" (JSON does not tell them apart); values that
    have no JSON type get their Python class name.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def is_integral(value: Any) -> bool:
    """3 and 3.0 yes, 3.5 and True no (JSON Schema's "integer")."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def has_json_type(value: Any, name: str) -> bool:
    """Whether ``value`` is of the JSON type ``name`` (one of :data:`JSON_TYPES`), as in JSON
    Schema: integers are also numbers, integral floats (``3.0``) are integers, booleans are
    only booleans."""
    if name == "integer":
        return is_integral(value)
    return name in JSON_TYPES and type_name(value) == name
