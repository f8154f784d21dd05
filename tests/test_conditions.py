"""Edge condition operators: what each one decides, and when it refuses."""

import re
from pathlib import Path

import pytest

from builder.conditions import (
    OPERATORS,
    UNARY_OPERATORS,
    ConditionError,
    evaluate_condition,
)
from builder.json_types import type_name

CANVAS_DOC = Path(__file__).resolve().parent.parent / "docs" / "canvas.md"


def documented_operators() -> dict[str, bool]:
    """The operators of the edge-condition table in docs/canvas.md: name -> unary."""
    text = CANVAS_DOC.read_text()
    table = text[text.index("| operator | true when") :].split("\n\n", 1)[0].splitlines()[2:]
    found = {}
    for row in table:
        names, meaning = row.strip("|").split("|", 1)
        for name in re.findall(r"`(\w+)`", names):
            found[name] = "(unary)" in meaning
    return found


def test_the_operators_are_the_documented_ones():
    """What the canvas spec lists is what a run decides with: no operator undocumented, none
    documented that the engine refuses as unknown, unary exactly where the spec says so."""
    documented = documented_operators()
    assert OPERATORS == set(documented)
    assert UNARY_OPERATORS == {name for name, unary in documented.items() if unary}


@pytest.mark.parametrize(
    ("left", "operator", "right"),
    [
        # equality
        (1, "eq", 1),
        (1, "eq", 1.0),
        ("a", "eq", "a"),
        (None, "eq", None),
        ([1, 2], "eq", [1, 2]),
        ([1, 2], "eq", (1, 2)),
        ({"a": [1]}, "eq", {"a": [1.0]}),
        (True, "eq", True),
        (1, "neq", 2),
        ("5", "neq", 5),
        (True, "neq", 1),
        # ordering
        (3, "gt", 2),
        (2.5, "gt", 2),
        (3, "gte", 3),
        (2, "lt", 3),
        (3, "lte", 3.0),
        ("b", "gt", "a"),
        ("apple", "lt", "banana"),
        # strings, arrays, objects
        ("hello world", "contains", "lo w"),
        ([1, 2, 3], "contains", 2),
        ([{"id": 1}], "contains", {"id": 1}),
        ({"name": "x"}, "contains", "name"),
        ("hello", "not_contains", "z"),
        ([1, 2], "not_contains", 3),
        ([1], "not_contains", True),
        ({"a": 1}, "not_contains", "b"),
        ("hello", "starts_with", "he"),
        ("hello", "ends_with", "llo"),
        ("order-123", "matches", r"\d+"),
        ("ABC", "matches", "^[A-Z]+$"),
        ("b", "in", ["a", "b"]),
        ("ell", "in", "hello"),
        ("k", "in", {"k": 1}),
        (2, "in", [1.0, 2.0]),
        ("z", "not_in", ["a", "b"]),
        ("z", "not_in", "hello"),
        ([1], "not_in", {"k": 1}),
        # presence and emptiness
        (0, "exists", None),
        ("", "exists", None),
        (False, "exists", None),
        (None, "not_exists", None),
        (None, "is_empty", None),
        ("", "is_empty", None),
        ([], "is_empty", None),
        ({}, "is_empty", None),
        (0, "is_not_empty", None),
        (False, "is_not_empty", None),
        (" ", "is_not_empty", None),
        ([None], "is_not_empty", None),
        # truthiness
        (True, "is_true", None),
        ("true", "is_true", None),
        ("TRUE", "is_true", None),
        (" True ", "is_true", None),
        (False, "is_false", None),
        ("False", "is_false", None),
        # lengths
        ("abc", "length_eq", 3),
        ([1, 2], "length_eq", "2"),
        ({"a": 1}, "length_eq", 1.0),
        ([1, 2, 3], "length_gt", 2),
        ("", "length_lt", 1),
        # types
        ("x", "type_is", "string"),
        (1, "type_is", "number"),
        (1.5, "type_is", "number"),
        (1, "type_is", "integer"),
        (2.0, "type_is", "integer"),
        (True, "type_is", "boolean"),
        ({}, "type_is", "object"),
        ([], "type_is", "array"),
        (None, "type_is", "null"),
    ],
)
def test_condition_holds(left, operator, right):
    assert evaluate_condition(left, operator, right) is True


@pytest.mark.parametrize(
    ("left", "operator", "right"),
    [
        (1, "eq", 2),
        (True, "eq", 1),
        (1, "eq", True),
        (False, "eq", 0),
        ([True], "eq", [1]),
        ({"a": 0}, "eq", {"a": False}),
        ("5", "eq", 5),
        ([1, 2], "eq", [2, 1]),
        ({"a": 1}, "eq", {"a": 1, "b": 2}),
        (1, "neq", 1.0),
        ("a", "neq", "a"),
        (2, "gt", 3),
        (3, "gt", 3),
        (2, "gte", 3),
        (3, "lt", 3),
        (4, "lte", 3),
        ("a", "gt", "b"),
        ("hello", "contains", "z"),
        ([1, 2], "contains", 3),
        ([1], "contains", True),
        ({"name": "x"}, "contains", "x"),
        ({"a": 1}, "contains", ["a"]),
        ("hello", "not_contains", "ell"),
        ([1, 2], "not_contains", 2),
        ("hello", "starts_with", "lo"),
        ("hello", "ends_with", "he"),
        ("order", "matches", r"\d+"),
        ("ABC1", "matches", "^[A-Z]+$"),
        ("c", "in", ["a", "b"]),
        (True, "in", [1, 2]),
        ("z", "in", "hello"),
        ("z", "in", {"k": 1}),
        ([1], "in", {"k": 1}),
        ("a", "not_in", ["a"]),
        (None, "exists", None),
        (0, "not_exists", None),
        (0, "is_empty", None),
        (False, "is_empty", None),
        (" ", "is_empty", None),
        ([None], "is_empty", None),
        (None, "is_not_empty", None),
        ("", "is_not_empty", None),
        (1, "is_true", None),
        ("yes", "is_true", None),
        ("1", "is_true", None),
        (False, "is_true", None),
        (0, "is_false", None),
        ("", "is_false", None),
        (None, "is_false", None),
        ("true", "is_false", None),
        ("abc", "length_eq", 2),
        ([1, 2], "length_gt", 2),
        ("abc", "length_lt", 3),
        (True, "type_is", "number"),
        (True, "type_is", "integer"),
        (1.5, "type_is", "integer"),
        (1, "type_is", "string"),
        ("1", "type_is", "number"),
        ([], "type_is", "object"),
        ({}, "type_is", "array"),
        (0, "type_is", "null"),
        (None, "type_is", "object"),
    ],
)
def test_condition_does_not_hold(left, operator, right):
    assert evaluate_condition(left, operator, right) is False


def test_unary_operators_ignore_the_value():
    assert evaluate_condition("x", "exists") is True
    assert evaluate_condition("x", "is_not_empty", "anything") is True
    assert evaluate_condition("true", "is_true", False) is True


@pytest.mark.parametrize(
    ("left", "operator", "right", "message"),
    [
        ("abc", "gt", 3, "gt cannot compare 'abc' (string) with 3 (number)"),
        (3, "lt", "4", "lt cannot compare 3 (number) with '4' (string)"),
        (True, "gte", 0, "gte cannot compare True (boolean) with 0 (number)"),
        (None, "lte", 1, "lte cannot compare None (null) with 1 (number)"),
        ([1], "gt", [0], "gt cannot compare [1] (array) with [0] (array)"),
        ("abc", "contains", 1, "contains needs a string value"),
        (None, "contains", "x", "contains needs a string, array or object as the field, got None (null)"),
        (5, "not_contains", 1, "not_contains needs a string, array or object as the field, got 5 (number)"),
        (5, "starts_with", "5", "starts_with needs a string field, got 5 (number)"),
        ("abc", "starts_with", None, "starts_with needs a string value, got None (null)"),
        (["a"], "ends_with", "a", "ends_with needs a string field, got ['a'] (array)"),
        (None, "matches", "x", "matches needs a string field, got None (null)"),
        ("abc", "matches", "(", "matches: invalid regular expression '('"),
        ("abc", "matches", 1, "matches needs a string value (a regular expression), got 1 (number)"),
        ("a", "in", None, "in needs an array, string or object as the value, got None (null)"),
        (1, "in", "123", "in needs a string field when the value is a string, got 1 (number)"),
        ("a", "not_in", 5, "not_in needs an array, string or object as the value, got 5 (number)"),
        (5, "length_eq", 1, "length_eq needs a string, array or object as the field, got 5 (number)"),
        (None, "length_gt", 0, "length_gt needs a string, array or object as the field, got None (null)"),
        ("abc", "length_lt", "many", "length_lt needs a whole number to compare the length with, got 'many'"),
        ("abc", "length_eq", 2.5, "length_eq needs a whole number"),
        ("abc", "length_eq", True, "length_eq needs a whole number"),
        ("abc", "type_is", "str", "type_is needs one of string, number, integer, boolean, object, array, null"),
    ],
)
def test_condition_errors_explain_the_problem(left, operator, right, message):
    with pytest.raises(ConditionError) as caught:
        evaluate_condition(left, operator, right)
    assert message in str(caught.value)


def test_unknown_operator_lists_valid_ones():
    with pytest.raises(ConditionError) as caught:
        evaluate_condition(1, "greater_than", 0)
    message = str(caught.value)
    assert "unknown operator 'greater_than'" in message
    for operator in ("eq", "gt", "matches", "type_is"):
        assert operator in message


def test_condition_error_is_a_value_error():
    with pytest.raises(ValueError):
        evaluate_condition("a", "gt", 1)


def test_long_values_are_shortened_in_messages():
    with pytest.raises(ConditionError) as caught:
        evaluate_condition("x" * 500, "gt", 1)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "boolean"),
        (False, "boolean"),
        (0, "number"),
        (1.5, "number"),
        ("", "string"),
        ([], "array"),
        ((1,), "array"),
        ({}, "object"),
        (b"x", "bytes"),
    ],
)
def test_type_name_uses_json_names(value, expected):
    assert type_name(value) == expected
