"""Run inputs: checking the declarations at compile time and the values at run time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from builder.issues import InputsInvalid, Issue
from builder.json_types import has_json_type, type_name
from builder.plan import Plan, thaw


def check_input_declarations(inputs: Mapping[str, Any]) -> list[Issue]:
    issues = []
    for name, spec in inputs.items():
        if spec.default is not None and not has_json_type(spec.default, spec.type):
            issues.append(
                Issue(
                    "input_default_type",
                    f"input {name!r} is declared {spec.type} but its default {spec.default!r} is not",
                    field=f"inputs.{name}.default",
                )
            )
        if spec.required and spec.default is not None:
            issues.append(
                Issue(
                    "input_required_default",
                    f"input {name!r} is required and also has a default; the default is never used",
                    field=f"inputs.{name}",
                    severity="warning",
                )
            )
    return issues


def coerce_text(value: str, declared: str) -> Any:
    """Turn a command-line ``key=value`` string into the declared type."""
    import json

    if declared == "string":
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value  # left as text; validate_inputs reports the mismatch


def validate_inputs(declared: Mapping[str, Mapping[str, Any]], given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` against the declarations and fill defaults; raise ``InputsInvalid``
    naming every bad input. Undeclared inputs are refused too when the canvas declares
    any: a typo in an input name should not silently fall back to a default."""
    issues = []
    resolved: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            value = given[name]
            if not has_json_type(value, spec["type"]):
                issues.append(
                    Issue(
                        "input_type",
                        f"input {name!r} must be {_article(spec['type'])}, got {_describe(value)}",
                        field=f"inputs.{name}",
                    )
                )
                continue
            if spec["type"] == "integer" and isinstance(value, float):
                value = int(value)
            resolved[name] = value
        elif spec.get("required"):
            issues.append(Issue("input_missing", f"input {name!r} is required", field=f"inputs.{name}"))
        else:
            resolved[name] = thaw(spec.get("default"))  # a plan's defaults are read-only; a run's values are not
    if not declared:
        return dict(given)  # a canvas that declares no inputs takes whatever it is given
    for name in sorted(set(given) - set(declared)):
        known = ", ".join(sorted(declared)) or "none"
        issues.append(
            Issue(
                "input_unknown",
                f"input {name!r} is not declared by the workflow (declared: {known})",
                field=f"inputs.{name}",
            )
        )
    if issues:
        raise InputsInvalid(issues)
    return resolved


def checked_inputs(plan: Plan, given: Mapping[str, Any]) -> dict[str, Any] | InputsInvalid:
    """The run inputs of ``plan`` (defaults filled in), or why ``given`` does not fit its
    declarations: the one check of a run's inputs, whoever starts the run (the CLI, the
    flow, the API). Returned rather than raised so that each caller says it its own way."""
    try:
        return validate_inputs(plan.inputs, given)
    except InputsInvalid as refused:
        return refused


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = "integer" if type(value) is int else type_name(value)  # (an input tells integers from numbers)
    return f"{kind} {text}"
