"""What a template or expression string reads, for the compiler's reference checks.

:func:`find_references` walks a node's configuration like ``render_value`` does and says,
per template string, which names it reads from the scope and which ``nodes[...]`` keys;
a string that does not parse gives its syntax error instead. The answer is the parser's
in every case: the fast path (``token_reader``) answers the usual strings, Jinja's parser
and a walk of its tree the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jinja2.meta
from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError

from builder.templates.determinism import NONDETERMINISTIC_CODE, REFUSED_FILTERS, REFUSED_GLOBALS, REFUSED_TESTS
from builder.templates.errors import TemplateError
from builder.templates.sandbox import JINJA_GLOBALS, get_environment
from builder.templates.syntax import (
    bracket_depth,
    expression_as_template,
    expression_source,
    parse_expression,
    single_expression,
    syntax_message,
)
from builder.templates.token_reader import read_references


class TemplateRefs(NamedTuple):
    """What one template/expression string reads, for the compiler's reference checks.

    ``field``: dotted path of the string this came from. ``names``: top-level names read
    freely (``inputs``, ``fetch``, ``nodes``...); names bound inside the template
    (``{% for x %}``, ``{% set %}``) and names Jinja provides (``range``...) are excluded.
    ``node_keys``: constant keys used as ``nodes["some-id"]`` / ``nodes.some_id``.
    ``error``: the syntax error when the string does not parse (then names and node_keys
    are empty); ``error_code`` says which kind: ``template_syntax``,
    ``nondeterministic_template`` for a name refused because it is not deterministic
    (``determinism``), or ``template_too_long`` / ``template_too_deep`` for a string over
    the limits.
    """

    field: str
    names: frozenset[str]
    node_keys: frozenset[str]
    error: TemplateError | None
    error_code: str = "template_syntax"


class TemplateShapeLimits(NamedTuple):
    """How large a template string may be before it is parsed (``builder.limits``)."""

    max_chars: int
    max_nesting: int
    """Brackets open at once: Jinja's parser recurses once per level."""


NO_TEMPLATE_LIMITS = TemplateShapeLimits(10**9, 10**9)


def find_references(
    value: Any,
    *,
    expression_keys: frozenset[str] = frozenset(),
    field: str = "data",
    limits: TemplateShapeLimits = NO_TEMPLATE_LIMITS,
) -> list[TemplateRefs]:
    """One :class:`TemplateRefs` per template or expression string inside ``value``.

    Walks dicts and lists exactly like :func:`render_value`; plain strings give nothing.
    A string over ``limits`` is not parsed: its TemplateRefs carries the error.
    """
    found: list[TemplateRefs] = []
    _collect_references(value, expression_keys, field, found, limits)
    return found


_SCALARS = frozenset({int, float, bool, type(None)})


def _is_container(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple)) or (type(value) not in _SCALARS and isinstance(value, Mapping))


def _collect_references(
    value: Any, expression_keys: frozenset[str], field: str, found: list[TemplateRefs], limits: TemplateShapeLimits
) -> None:
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            found.append(_refs(value, field, as_expression=False, limits=limits))
    elif isinstance(value, dict) or (type(value) not in _SCALARS and isinstance(value, Mapping)):
        for key, item in value.items():
            if isinstance(item, str):  # (the field path is only built for what is read)
                if key in expression_keys:
                    found.append(_refs(item, f"{field}.{key}", as_expression=True, limits=limits))
                elif "{{" in item or "{%" in item:
                    found.append(_refs(item, f"{field}.{key}", as_expression=False, limits=limits))
            elif type(item) not in _SCALARS and _is_container(item):
                _collect_references(item, expression_keys, f"{field}.{key}", found, limits)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if isinstance(item, str):
                if "{{" in item or "{%" in item:
                    found.append(_refs(item, f"{field}[{index}]", as_expression=False, limits=limits))
            elif type(item) not in _SCALARS and _is_container(item):
                _collect_references(item, expression_keys, f"{field}[{index}]", found, limits)


def _refs(text: str, field: str, *, as_expression: bool, limits: TemplateShapeLimits) -> TemplateRefs:
    too_large = _over_limits(text, limits)
    if too_large is not None:
        code, message = too_large
        return TemplateRefs(field, NO_NAMES, NO_NAMES, TemplateError(message, field), code)
    analysis = analyse(text, as_expression)
    error = None
    if analysis.error_message is not None:
        error = TemplateError(analysis.error_message, field, analysis.error_lineno)
    return TemplateRefs(field, analysis.names, analysis.node_keys, error, analysis.error_code)


def _over_limits(text: str, limits: TemplateShapeLimits) -> tuple[str, str] | None:
    """The issue code and message of a string too large to parse, else None."""
    if len(text) > limits.max_chars:
        return "template_too_long", (
            f"the template is {len(text)} characters long; at most {limits.max_chars} are allowed"
        )
    if len(text) > limits.max_nesting:  # (fewer characters cannot open that many brackets)
        depth = bracket_depth(text)
        if depth > limits.max_nesting:
            return "template_too_deep", (
                f"the template is nested too deeply: {depth} brackets open at once, at "
                f"most {limits.max_nesting} are allowed"
            )
    return None


class Analysis(NamedTuple):
    """What one string reads, wherever it sits (``TemplateRefs`` without the field)."""

    names: frozenset[str]
    node_keys: frozenset[str]
    error_message: str | None
    error_lineno: int | None
    error_code: str = "template_syntax"


NO_NAMES: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=65536)
def analyse(text: str, as_expression: bool) -> Analysis:
    """What one string reads; cached because canvases repeat the same strings a lot.

    Exact in every case: the fast path (a regex for lookup paths, then a token-level
    reader of the expression grammar) answers for the usual strings, Jinja's parser for
    everything else (block tags, slices, unknown filters, syntax errors, ...).
    """
    try:
        return analyse_tokens(text, as_expression) or analyse_parsed(text, as_expression)
    except RecursionError:
        # Nesting that the bracket count does not see (chains of unary operators, inline
        # ifs, nested blocks): Jinja's recursive parser ran out of stack. An issue, never
        # a traceback (thousands of lines) in the API's log.
        return Analysis(NO_NAMES, NO_NAMES, "the template is nested too deeply to be parsed", None, "template_too_deep")


def analyse_tokens(text: str, as_expression: bool) -> Analysis | None:
    """The fast path (``token_reader``): the parser's answer, or None when it cannot tell."""
    found = read_references(text, as_expression)
    return None if found is None else Analysis(*found, None, None)


def analyse_parsed(text: str, as_expression: bool) -> Analysis:
    """The exact path: parse with Jinja and walk the tree."""
    inner = expression_source(text) if as_expression else single_expression(text)
    try:
        if inner is not None:
            if not inner.strip():
                return Analysis(NO_NAMES, NO_NAMES, "the expression is empty", None)
            tree = expression_as_template(parse_expression(inner))
        else:
            tree = get_environment().parse(text)
        names, node_keys = names_and_keys(tree)
    except RefusedName as exc:
        return Analysis(NO_NAMES, NO_NAMES, exc.message, exc.lineno, NONDETERMINISTIC_CODE)
    except TemplateSyntaxError as exc:
        return Analysis(NO_NAMES, NO_NAMES, syntax_message(exc, expression=as_expression, source=text), exc.lineno)
    return Analysis(names, node_keys if "nodes" in names else NO_NAMES, None, None)


_SIMPLE_STATEMENTS = (nodes.Output, nodes.If)


class RefusedName(TemplateSyntaxError):
    """A template uses a name that is not offered because it is not deterministic."""


def _refused(node: nodes.Name | nodes.Filter | nodes.Test) -> RefusedName:
    advice = "pass such values in as inputs"
    if isinstance(node, nodes.Filter):
        what, why = f"the {node.name} filter", REFUSED_FILTERS[node.name]
    elif isinstance(node, nodes.Test):
        what, why = f"the {node.name} test", REFUSED_TESTS[node.name]
        advice = "use 'is none', 'is true', 'is false' or '=='"
    else:
        what, why = node.name, REFUSED_GLOBALS[node.name]
    return RefusedName(
        f"{what} is not allowed: {why}, so the node would get a new configuration each time "
        f"it runs and run again after a crash or retry; {advice}",
        node.lineno,
    )


def _check_refused(tree: nodes.Node) -> None:
    for node in tree.find_all((nodes.Name, nodes.Filter, nodes.Test)):
        if isinstance(node, nodes.Filter) and node.name in REFUSED_FILTERS:
            raise _refused(node)
        if isinstance(node, nodes.Test) and node.name in REFUSED_TESTS:
            raise _refused(node)
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in REFUSED_GLOBALS:
            raise _refused(node)


class _NeedsJinja(Exception):
    """The tree binds names (for, set, macro, ...): Jinja's own scoping rules decide."""


def names_and_keys(tree: nodes.Template) -> tuple[frozenset[str], frozenset[str]]:
    """Free names and ``nodes[...]`` keys in one walk of the tree; raises
    TemplateSyntaxError for unknown filters/tests.

    Most configuration strings are interpolations and conditionals that bind nothing, so
    every loaded name is free: one walk of the tree answers, about 3x faster than
    ``jinja2.meta.find_undeclared_variables`` (which runs the code generator). Strings with
    for/set/macro/with/... (or ``is filter`` guards) take that exact, slower route.
    """
    try:
        return _walk(tree)
    except _NeedsJinja:
        _check_refused(tree)
        return _undeclared_by_jinja(tree), _node_keys(tree)


def _walk(tree: nodes.Node) -> tuple[frozenset[str], frozenset[str]]:
    env = get_environment()
    names: set[str] = set()
    keys: set[str] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is nodes.Name:
            if node.name in REFUSED_GLOBALS:
                raise _refused(node)
            if node.name not in JINJA_GLOBALS:
                names.add(node.name)
            continue
        if kind is nodes.Getattr or kind is nodes.Getitem:
            owner = node.node
            if type(owner) is nodes.Name and owner.name == "nodes":
                if kind is nodes.Getattr:
                    keys.add(node.attr)
                elif type(node.arg) is nodes.Const and isinstance(node.arg.value, str):
                    keys.add(node.arg.value)
        elif kind is nodes.Filter:
            if node.name in REFUSED_FILTERS:
                raise _refused(node)
            if node.name not in env.filters:
                raise TemplateSyntaxError(f"No filter named {node.name!r}.", node.lineno)
        elif kind is nodes.Test:
            if node.name in REFUSED_TESTS:
                raise _refused(node)
            if node.name in ("filter", "test"):
                raise _NeedsJinja
            if node.name not in env.tests:
                raise TemplateSyntaxError(f"No test named {node.name!r}.", node.lineno)
        elif isinstance(node, nodes.Stmt) and not isinstance(node, _SIMPLE_STATEMENTS):
            raise _NeedsJinja
        children = []  # visited in document order, like Node.find_all
        for name in node.fields:
            child = getattr(node, name, None)
            if isinstance(child, nodes.Node):
                children.append(child)
            elif isinstance(child, list):
                children.extend(item for item in child if isinstance(item, nodes.Node))
        stack.extend(reversed(children))
    return frozenset(names), frozenset(keys)


def _undeclared_by_jinja(tree: nodes.Template) -> frozenset[str]:
    tree.set_environment(get_environment())  # the code generator needs it on every node
    return frozenset(jinja2.meta.find_undeclared_variables(tree))


def _node_keys(tree: nodes.Node) -> frozenset[str]:
    keys = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if not (isinstance(node.node, nodes.Name) and node.node.name == "nodes"):
            continue
        if isinstance(node, nodes.Getattr):
            keys.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            keys.add(node.arg.value)
    return frozenset(keys)
