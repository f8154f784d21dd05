"""Edge conditions: ``{"field": <left>, "operator": "...", "value": <right>}``.

Both sides arrive already resolved (templates rendered). Operators behave as a user of
n8n-style "IF" nodes expects, with no silent type coercion: when a comparison makes no
sense for the values given, :class:`ConditionError` says so instead of quietly picking a
branch. Convert in the template when needed (``{{ inputs.count | int }}``).

=================  =================================================================
operator           true when
=================  =================================================================
eq / neq           equal / not equal. ``1`` equals ``1.0``; a boolean never equals a
                   number (``True`` is not ``1``), also inside lists and objects;
                   no coercion (``"5"`` is not ``5``); lists and tuples are both arrays.
gt gte lt lte      number vs number (booleans excluded) or string vs string
                   (alphabetical, case-sensitive); anything else is an error.
contains           string left: ``value`` is a substring (``value`` must be a string);
                   array left: ``value`` is an element (with eq's equality);
                   object left: ``value`` is a key. Any other left is an error.
not_contains       the opposite of contains (same errors).
starts_with        string left starts with string ``value``; non-strings are errors.
ends_with          string left ends with string ``value``; non-strings are errors.
matches            ``value`` is a regular expression found anywhere in the string left
                   (anchor with ``^...$``), matched by RE2 in linear time: Python's
                   syntax without backreferences (``\\1``) and lookaround (``(?=``,
                   ``(?!``, ``(?<=``, ``(?<!``). An invalid pattern is an error.
in / not_in        left is an element of the array ``value``, a substring of the string
                   ``value`` (left must be a string) or a key of the object ``value``.
exists             left is not None (null). ``not_exists``: left is None.
is_empty           left is None, ``""``, ``[]`` or ``{}`` (whitespace is not empty;
                   numbers and booleans are never empty). ``is_not_empty``: the opposite.
is_true/is_false   left is the boolean True/False, or the text "true"/"false" in any case
                   (values read from text); ``1``, ``"yes"``, ``"1"`` are neither.
length_eq/gt/lt    ``len(left)`` compared with the whole number ``value`` (``3``, ``3.0``
                   or ``"3"``); left must be a string, array or object.
type_is            left has the JSON type ``value``: string, number, integer, boolean,
                   object, array, null. Integers are also numbers, integral floats
                   (``3.0``) are integers (as in JSON Schema), booleans are only booleans.
=================  =================================================================

Unary operators (exists, not_exists, is_empty, is_not_empty, is_true, is_false) ignore ``value``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sized
from typing import Any

import re2

from builder.json_types import JSON_TYPES, has_json_type, is_integral, type_name

__all__ = [
    "OPERATORS",
    "UNARY_OPERATORS",
    "ConditionError",
    "evaluate_condition",
    "pattern_problem",
]


class ConditionError(ValueError):
    """A condition that cannot be evaluated for the values given (readable message)."""


# --------------------------------------------------------------------------- describing values


def _describe(value: Any) -> str:
    """``'abc' (string)``: the value, shortened, with its type, for error messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type_name(value)})"


# --------------------------------------------------------------------------- value helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(left: Any, right: Any) -> bool:
    """Python equality, except that a boolean never equals a number (at any depth)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return len(left) == len(right) and all(_equal(a, b) for a, b in zip(left, right))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_equal(left[key], right[key]) for key in left)
    return bool(left == right)


def _is_element(item: Any, values: list | tuple) -> bool:
    return any(_equal(item, value) for value in values)


def _is_key(key: Any, mapping: Mapping) -> bool:
    try:
        return key in mapping
    except TypeError:  # unhashable (a list or object) can never be a key
        return False


def _whole_number(operator: str, value: Any) -> int:
    """The length to compare against: ``3``, ``3.0`` or ``"3"``, nothing fractional."""
    if is_integral(value):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ConditionError(f"{operator} needs a whole number to compare the length with, got {_describe(value)}")


def _require_string(operator: str, side: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConditionError(f"{operator} needs a string {side}, got {_describe(value)}")
    return value


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a user's bad pattern is a ConditionError, not a line on stderr


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be used by ``matches`` (None: it can); the compiler reports it."""
    try:
        _compiled_pattern(pattern)
    except ConditionError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=256)
def _compiled_pattern(pattern: str) -> Any:
    # RE2 matches in time linear in the text: Python's re backtracks, and '^(a+)+$' on 28
    # a's and a '!' held the worker's event loop for 10 s (each extra 'a' doubling it).
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        hint = (
            "; backreferences and lookaround are not supported (RE2 matches in linear time)"
            if re.search(r"\\[1-9]|\(\?<?[=!]", pattern)
            else ""
        )
        raise ConditionError(f"matches: invalid regular expression {pattern!r}: {reason}{hint}") from None


# --------------------------------------------------------------------------- operators


def _compare(operator: str, left: Any, right: Any) -> tuple[Any, Any]:
    """Both sides, when they can be ordered: number with number or string with string."""
    if (_is_number(left) and _is_number(right)) or (isinstance(left, str) and isinstance(right, str)):
        return left, right
    raise ConditionError(f"{operator} cannot compare {_describe(left)} with {_describe(right)}")


def _gt(left: Any, right: Any) -> bool:
    a, b = _compare("gt", left, right)
    return a > b


def _gte(left: Any, right: Any) -> bool:
    a, b = _compare("gte", left, right)
    return a >= b


def _lt(left: Any, right: Any) -> bool:
    a, b = _compare("lt", left, right)
    return a < b


def _lte(left: Any, right: Any) -> bool:
    a, b = _compare("lte", left, right)
    return a <= b


def _contains(left: Any, right: Any, operator: str = "contains") -> bool:
    if isinstance(left, str):
        return _require_string(operator, "value when the field is a string", right) in left
    if isinstance(left, (list, tuple)):
        return _is_element(right, left)
    if isinstance(left, Mapping):
        return _is_key(right, left)
    raise ConditionError(f"{operator} needs a string, array or object as the field, got {_describe(left)}")


def _not_contains(left: Any, right: Any) -> bool:
    return not _contains(left, right, "not_contains")


def _starts_with(left: Any, right: Any) -> bool:
    return _require_string("starts_with", "field", left).startswith(_require_string("starts_with", "value", right))


def _ends_with(left: Any, right: Any) -> bool:
    return _require_string("ends_with", "field", left).endswith(_require_string("ends_with", "value", right))


def _matches(left: Any, right: Any) -> bool:
    pattern = _compiled_pattern(_require_string("matches", "value (a regular expression)", right))
    return pattern.search(_require_string("matches", "field", left)) is not None


def _in(left: Any, right: Any, operator: str = "in") -> bool:
    if isinstance(right, (list, tuple)):
        return _is_element(left, right)
    if isinstance(right, str):
        return _require_string(operator, "field when the value is a string", left) in right
    if isinstance(right, Mapping):
        return _is_key(left, right)
    raise ConditionError(f"{operator} needs an array, string or object as the value, got {_describe(right)}")


def _not_in(left: Any, right: Any) -> bool:
    return not _in(left, right, "not_in")


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value) == 0
    return False


def _text_is(value: Any, word: str) -> bool:
    return isinstance(value, str) and value.strip().lower() == word


def _is_true(left: Any, right: Any = None) -> bool:
    return left is True or _text_is(left, "true")


def _is_false(left: Any, right: Any = None) -> bool:
    return left is False or _text_is(left, "false")


def _length(operator: str, left: Any) -> int:
    if isinstance(left, Sized):
        return len(left)
    raise ConditionError(f"{operator} needs a string, array or object as the field, got {_describe(left)}")


def _length_eq(left: Any, right: Any) -> bool:
    return _length("length_eq", left) == _whole_number("length_eq", right)


def _length_gt(left: Any, right: Any) -> bool:
    return _length("length_gt", left) > _whole_number("length_gt", right)


def _length_lt(left: Any, right: Any) -> bool:
    return _length("length_lt", left) < _whole_number("length_lt", right)


def _type_is(left: Any, right: Any) -> bool:
    if right not in JSON_TYPES:
        raise ConditionError(f"type_is needs one of {', '.join(JSON_TYPES)} as the value, got {_describe(right)}")
    return has_json_type(left, right)


_OPERATIONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": _equal,
    "neq": lambda left, right: not _equal(left, right),
    "gt": _gt,
    "gte": _gte,
    "lt": _lt,
    "lte": _lte,
    "contains": _contains,
    "not_contains": _not_contains,
    "starts_with": _starts_with,
    "ends_with": _ends_with,
    "matches": _matches,
    "in": _in,
    "not_in": _not_in,
    "exists": lambda left, right: left is not None,
    "not_exists": lambda left, right: left is None,
    "is_empty": lambda left, right: _is_empty(left),
    "is_not_empty": lambda left, right: not _is_empty(left),
    "is_true": _is_true,
    "is_false": _is_false,
    "length_eq": _length_eq,
    "length_gt": _length_gt,
    "length_lt": _length_lt,
    "type_is": _type_is,
}

OPERATORS: frozenset[str] = frozenset(_OPERATIONS)
UNARY_OPERATORS: frozenset[str] = frozenset({"exists", "not_exists", "is_empty", "is_not_empty", "is_true", "is_false"})


def evaluate_condition(left: Any, operator: str, right: Any = None) -> bool:
    """Whether ``left <operator> right`` holds (see the module docstring for each operator).

    Raises :class:`ConditionError` for an unknown operator or values the operator cannot
    handle (``gt`` between a string and a number, ``matches`` with a broken pattern, ...).
    """
    operation = _OPERATIONS.get(operator)
    if operation is None:
        raise ConditionError(f"unknown operator {operator!r}; valid operators: {', '.join(_OPERATIONS)}")
    return bool(operation(left, right))
