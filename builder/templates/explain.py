"""Explaining a missing name or attribute in words a user understands.

Jinja says ``'dict object' has no attribute 'x'``; a user wants to read
``'fetch.body' has no attribute 'x' (did you mean 'y'?)``: which lookup of the template
failed, on what, and the closest key that exists.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError, UndefinedError
from jinja2.utils import missing

from builder.templates.sandbox import ENV_ALLOWLIST_SETTING, EnvNamespace, get_environment
from builder.templates.syntax import parse_expression


def explain_undefined(exc: UndefinedError, source: str, is_expression: bool, scope: Mapping[str, Any]) -> str:
    """Turn Jinja's "'dict object' has no attribute 'x'" into "'fetch' has no attribute 'x'"."""
    details = exc.args[0] if exc.args else None
    undefined = getattr(details, "undefined", None)
    if undefined is None:
        return str(exc)
    hint = undefined._undefined_hint
    obj = undefined._undefined_obj
    name = undefined._undefined_name
    if hint:
        return hint
    if obj is missing:
        return f"{name!r} is not defined" + _did_you_mean(name, scope)
    if isinstance(obj, EnvNamespace):
        return f"env.{name} is in {ENV_ALLOWLIST_SETTING} but is not set in the environment"

    path = _locate_owner(source, is_expression, obj, name, scope)
    subject = f"{path!r}" if path else _kind_of(obj)
    if obj is None:
        what = f"attribute {name!r}" if isinstance(name, str) else f"element {name!r}"
        return f"{subject} is null, so it has no {what}"
    if not isinstance(name, str):
        size = ""
        if isinstance(obj, Sequence) and not isinstance(obj, str):
            size = f" (it has {len(obj)} item{'' if len(obj) == 1 else 's'})"
        return f"{subject} has no element {name!r}{size}"
    suggestion = _did_you_mean(name, obj) if isinstance(obj, Mapping) else ""
    return f"{subject} has no attribute {name!r}{suggestion}"


def _did_you_mean(name: Any, candidates: Mapping[str, Any]) -> str:
    if not isinstance(name, str):
        return ""
    keys = [key for key in candidates if isinstance(key, str)]
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind_of(value: Any) -> str:
    kinds = {
        dict: "an object",
        list: "a list",
        tuple: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    for kind, description in kinds.items():
        if isinstance(value, kind):
            return description
    return f"a {type(value).__name__} value"


def _locate_owner(source: str, is_expression: bool, obj: Any, name: Any, scope: Mapping[str, Any]) -> str | None:
    """The text (``fetch.body``) of the expression whose value lacked ``name``, if it can be told.

    Candidates are the lookups in the template that ask for ``name``; with several, the one
    whose owner resolves (through the same sandbox) to the very object that lacked it wins.
    """
    try:
        tree = parse_expression(source) if is_expression else get_environment().parse(source)
    except TemplateSyntaxError:
        return None
    owners = []
    for node in [tree, *tree.find_all((nodes.Getattr, nodes.Getitem))]:
        if isinstance(node, nodes.Getattr) and node.attr == name:
            owners.append(node.node)
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and _same_key(node.arg.value, name):
            owners.append(node.node)
    described = [(owner, _path_text(owner)) for owner in owners]
    described = [(owner, text) for owner, text in described if text is not None]
    for owner, text in described:
        if _resolve(owner, scope) is obj:
            return text
    if len({text for _, text in described}) == 1:
        return described[0][1]
    return None


def _same_key(written: Any, looked_up: Any) -> bool:
    return type(written) is type(looked_up) and written == looked_up


def _path_text(node: nodes.Node) -> str | None:
    """``nodes["my-node"].body[0]`` back as text, for lookup chains only."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        base = _path_text(node.node)
        return None if base is None else f"{base}.{node.attr}"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        base = _path_text(node.node)
        key = node.arg.value
        if base is None or not isinstance(key, (str, int)):
            return None
        return f"{base}[{json.dumps(key)}]"
    return None


_UNRESOLVED = object()


def _resolve(node: nodes.Node, scope: Mapping[str, Any]) -> Any:
    """Follow a lookup chain through the sandbox; _UNRESOLVED when it leaves the scope's data."""
    env = get_environment()
    try:
        if isinstance(node, nodes.Name):
            return scope.get(node.name, _UNRESOLVED)
        base = _resolve(node.node, scope)
        if base is _UNRESOLVED:
            return _UNRESOLVED
        value = env.getattr(base, node.attr) if isinstance(node, nodes.Getattr) else env.getitem(base, node.arg.value)
    except Exception:
        return _UNRESOLVED
    return _UNRESOLVED if isinstance(value, jinja2.Undefined) else value
