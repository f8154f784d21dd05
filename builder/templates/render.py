"""Rendering configuration values and evaluating expressions against a run's scope.

A string that is exactly one ``{{ expression }}`` keeps the expression's Python type
(``"{{ inputs.count }}"`` gives ``3``, not ``"3"``); any other template renders to a string,
where objects, lists, booleans and None are written as JSON. Every failure is a
:class:`TemplateRenderError` naming the field; nothing silently renders as an empty string.
"""

from __future__ import annotations

import functools
from collections import ChainMap
from collections.abc import Iterator, Mapping, MappingView
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError

from builder.templates.budget import DEFAULT_LIMITS, RenderBudget, TemplateLimits
from builder.templates.determinism import check_printable
from builder.templates.errors import TemplateRenderError
from builder.templates.explain import explain_undefined
from builder.templates.sandbox import get_environment
from builder.templates.syntax import (
    expression_source,
    is_template,
    parse_expression,
    single_expression,
    syntax_message,
)


def render_value(
    value: Any,
    scope: Mapping[str, Any],
    *,
    expression_keys: frozenset[str] = frozenset(),
    field: str = "data",
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> Any:
    """Render every template string inside ``value`` (dicts and lists, recursively).

    Dict keys are never rendered. A string directly under a dict key in
    ``expression_keys`` is an expression (bare or wrapped). Returns new, plain containers
    (any mapping gives a ``dict``, any list or tuple a ``list``, so a plan's read-only data
    renders to values a handler may change) and never mutates ``value``. Raises
    :class:`TemplateRenderError` whose ``field`` is the dotted path of the failing string
    (``data.conditions[0].expression``).

    All the strings share one budget of ``limits`` (``budget``): a loop that runs too long
    or a value too large fails the string that exceeded it, with a message naming the limit.
    """
    return _render(value, scope, expression_keys, field, RenderBudget(limits))


def _render(
    value: Any, scope: Mapping[str, Any], expression_keys: frozenset[str], field: str, budget: RenderBudget
) -> Any:
    if isinstance(value, str):
        return _evaluate(value, scope, field, budget, as_expression=False) if is_template(value) else value
    if isinstance(value, Mapping):
        rendered = {}
        for key, item in value.items():
            item_field = f"{field}.{key}"
            if isinstance(item, str) and key in expression_keys:
                rendered[key] = _evaluate(item, scope, item_field, budget, as_expression=True)
            else:
                rendered[key] = _render(item, scope, expression_keys, item_field, budget)
        return rendered
    if isinstance(value, (list, tuple)):
        return [_render(item, scope, expression_keys, f"{field}[{index}]", budget) for index, item in enumerate(value)]
    return value


def evaluate_expression(
    expression: str, scope: Mapping[str, Any], *, field: str = "expression", limits: TemplateLimits = DEFAULT_LIMITS
) -> Any:
    """Evaluate an expression written bare (``a > 1``) or wrapped (``{{ a > 1 }}``) to its Python value."""
    return _evaluate(expression, scope, field, RenderBudget(limits), as_expression=True)


def _evaluate(text: str, scope: Mapping[str, Any], field: str, budget: RenderBudget, *, as_expression: bool) -> Any:
    """Evaluate one string; every failure becomes a TemplateRenderError naming ``field``."""
    inner = expression_source(text) if as_expression else single_expression(text)
    try:
        if inner is not None:
            if not inner.strip():
                raise TemplateRenderError("the expression is empty", field)
            return _run_expression(inner, scope, budget)
        return _run_template(text, scope, budget)
    except TemplateRenderError as exc:
        raise TemplateRenderError(exc.message, field) from exc
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(syntax_message(exc, expression=as_expression, source=text), field) from exc
    except SecurityError as exc:
        raise TemplateRenderError(f"refused by the template sandbox: {exc.message}", field) from exc
    except UndefinedError as exc:
        source = inner if inner is not None else text
        raise TemplateRenderError(explain_undefined(exc, source, inner is not None, scope), field) from exc
    except jinja2.TemplateError as exc:
        raise TemplateRenderError(exc.message or type(exc).__name__, field) from exc
    except Exception as exc:  # user code: TypeError, ZeroDivisionError, OverflowError, ...
        raise TemplateRenderError(str(exc) or type(exc).__name__, field) from exc


def _run_template(text: str, scope: Mapping[str, Any], budget: RenderBudget) -> str:
    template = _compiled_template(text)
    context = template.new_context(_context_vars(scope, template), shared=True)
    context.budget = budget  # type: ignore[attr-defined]
    # Counted as it is produced: the render stops at the size limit, before joining.
    return budget.joined(template.root_render_func(context))  # type: ignore[attr-defined]


def _run_expression(source: str, scope: Mapping[str, Any], budget: RenderBudget) -> Any:
    compiled, may_hold_undefined = _compiled_expression(source)
    # TemplateExpression.__call__ copies its arguments into a dict; run its template
    # directly instead (same steps, without the copy).
    template = compiled._template
    context = template.new_context(_context_vars(scope, template), shared=True)
    context.budget = budget  # type: ignore[attr-defined]
    for _ in template.root_render_func(context):
        pass
    result = context.vars["result"]
    if isinstance(result, jinja2.Undefined):
        result._fail_with_undefined_error()
    if isinstance(result, (Iterator, MappingView, range)):
        # map/select filters yield generators, .keys() a view, range() a range: users mean a list.
        result = list(result)
    if may_hold_undefined:
        _raise_if_undefined_inside(result)
        check_printable(result)
    elif not isinstance(result, _DATA):
        check_printable(result)  # a method read by a lookup path: ``{{ inputs.get }}``
    return result


_DATA = (str, int, float, type(None), Mapping, list, tuple)
"""What a lookup path gives from the scope, which holds data (JSON) only."""


def _raise_if_undefined_inside(value: Any) -> None:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, Mapping):
        for item in value.values():
            _raise_if_undefined_inside(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _raise_if_undefined_inside(item)


def _context_vars(scope: Mapping[str, Any], template: jinja2.Template) -> ChainMap[str, Any]:
    # The scope holds every node's output (tens of thousands on big canvases); Jinja's
    # render() copies it per call, a ChainMap with the globals does not.
    return ChainMap(scope, template.globals)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4096)
def _compiled_template(text: str) -> jinja2.Template:
    return get_environment().from_string(text)


@functools.lru_cache(maxsize=4096)
def _compiled_expression(source: str) -> tuple[jinja2.environment.TemplateExpression, bool]:
    """The compiled expression, and whether its result may hold Undefined values.

    A plain lookup path (``a.b["c"][0]``) returns data from the scope, which never holds
    Undefined; anything else (``[a.x]``, ``items | map(attribute='x') | list``) could
    wrap one inside a container, so its result is scanned.
    """
    tree = parse_expression(source)  # first, for our wording of syntax errors
    compiled = get_environment().compile_expression(source, undefined_to_none=False)
    return compiled, not _is_lookup_path(tree)


def _is_lookup_path(node: nodes.Node) -> bool:
    if isinstance(node, (nodes.Name, nodes.Const)):
        return True
    if isinstance(node, nodes.Getattr):
        return _is_lookup_path(node.node)
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and _is_lookup_path(node.node)
    return False
