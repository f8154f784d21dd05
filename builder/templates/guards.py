"""Which nodes a template *dereferences* without a guard, for the skipped-branch warning.

A node that was skipped reads as ``none``: ``{{ refund }}`` renders ``null``, but
``{{ refund.body.id }}`` fails the run. A dereference (an attribute or item of the node's
output) is guarded when it sits on the right of ``refund and ...``, in either branch of
``... if refund else ...`` or inside ``{% if refund %}``: the template then tests the node
before reading into it. ``coalesce(refund, {})`` reads the node without dereferencing it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError

from builder.templates.sandbox import get_environment
from builder.templates.syntax import expression_source, parse_expression, single_expression


def template_strings(value: Any, expression_keys: frozenset[str], field: str) -> Iterator[tuple[str, str, bool]]:
    """(field, text, is an expression) of every template or expression string in ``value``,
    walked like ``find_references`` walks it."""
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            yield field, value, False
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and key in expression_keys:
                yield f"{field}.{key}", item, True
            else:
                yield from template_strings(item, expression_keys, f"{field}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from template_strings(item, frozenset(), f"{field}[{index}]")


def unguarded_dereferences(text: str, as_expression: bool, targets: frozenset[str]) -> frozenset[str]:
    """The ``targets`` (node ids) whose output ``text`` reads into without testing them first.
    A string that does not parse gives nothing (its syntax error is reported elsewhere)."""
    try:
        if as_expression:
            tree: nodes.Node = parse_expression(expression_source(text))
        else:
            inner = single_expression(text)
            tree = parse_expression(inner) if inner is not None else get_environment().parse(text)
    except (TemplateSyntaxError, RecursionError):
        return frozenset()
    found: set[str] = set()
    try:
        _walk(tree, targets, frozenset(), found)
    except RecursionError:  # nested beyond the stack: no warning rather than a traceback
        return frozenset()
    return frozenset(found)


def _target_of(node: nodes.Node, targets: frozenset[str]) -> str | None:
    """The node id ``node`` names: ``refund``, ``nodes.refund`` or ``nodes["refund"]``."""
    if isinstance(node, nodes.Name):
        return node.name if node.name in targets else None
    if isinstance(node, (nodes.Getattr, nodes.Getitem)) and isinstance(node.node, nodes.Name):
        if node.node.name != "nodes":
            return None
        if isinstance(node, nodes.Getattr):
            key: Any = node.attr
        else:
            key = node.arg.value if isinstance(node.arg, nodes.Const) else None
        return key if key in targets else None
    return None


def _mentioned(node: nodes.Node, targets: frozenset[str]) -> frozenset[str]:
    """Targets a test reads in any way: reading them there counts as testing them."""
    found = {t for n in node.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)) if (t := _target_of(n, targets))}
    own = _target_of(node, targets)
    return frozenset(found | ({own} if own else set()))


def _walk(node: nodes.Node, targets: frozenset[str], guarded: frozenset[str], found: set[str]) -> None:
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
        target = _target_of(node.node, targets)
        if target is not None and target not in guarded:
            found.add(target)
    if isinstance(node, nodes.And):
        _walk(node.left, targets, guarded, found)
        _walk(node.right, targets, guarded | _mentioned(node.left, targets), found)
        return
    if isinstance(node, nodes.CondExpr):
        _walk(node.test, targets, guarded, found)
        inner = guarded | _mentioned(node.test, targets)
        _walk(node.expr1, targets, inner, found)
        if node.expr2 is not None:
            _walk(node.expr2, targets, inner, found)
        return
    if isinstance(node, nodes.If):
        _walk(node.test, targets, guarded, found)
        inner = guarded | _mentioned(node.test, targets)
        for child in (*node.body, *node.elif_, *node.else_):
            _walk(child, targets, inner, found)
        return
    for child in node.iter_child_nodes():
        _walk(child, targets, guarded, found)
