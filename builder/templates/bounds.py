"""What the sandbox checks before an operator, method or filter builds a value.

A short template can ask for a huge value in one operation (``'%050000000d' % 0``,
``'{:>99999999}'.format(1)``, ``'x' | indent(10**8)``, ``'ab' | replace('', 'x' * 9999)``):
each is refused here *before* it allocates, from its arguments, against the render's
:class:`~builder.templates.budget.RenderBudget`. Results larger than their input are
charged to the budget afterwards, so no operation builds past ``max_chars`` unseen.
"""

from __future__ import annotations

import operator as operator_module
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.utils import _PassArg

from builder.templates.budget import CHARS_PER_STEP, RenderBudget, TemplateBudgetError, size_hint
from builder.templates.determinism import REFUSED_FILTERS, REFUSED_TESTS, check_printable, text_of

MAX_POWER_BITS = 100_000
"""The largest integer ``**`` or ``*`` may build, in bits (30,000 digits)."""
MAX_JSON_INDENT = 64
_DIGITS = re.compile(r"\d+")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?([#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?)[hlL]?[a-zA-Z%]")


# --------------------------------------------------------------------------- formats


def _widths(spec: str) -> int:
    """The sum of the numbers in a format spec: an upper bound of the widths and precisions
    it asks for (``>10.3`` gives 13; a digit used as fill only makes it larger)."""
    return sum(int(digits) for digits in _DIGITS.findall(spec))


def check_format(budget: RenderBudget, template: str) -> None:
    """``template.format(...)``: refuse widths and precisions that would build too much."""
    total = 0
    for literal, _field, spec, _conversion in string.Formatter().parse(template):
        total += len(literal)
        if spec:
            if "{" in spec:
                raise SecurityError(
                    "a format spec taken from another field ('{:{width}}') is not allowed "
                    "in templates; write the width itself"
                )
            total += _widths(spec)
    budget.will_build(total, "a str.format result")


def check_percent(budget: RenderBudget, template: str) -> None:
    """``template % values``: refuse widths and precisions that would build too much."""
    total = len(template)
    for match in _PERCENT_SPEC.finditer(template):
        if "*" in match.group(1):
            raise SecurityError(
                "a '*' width or precision in '%' formatting is not allowed in templates; write the number itself"
            )
        total += _widths(match.group(1))
    budget.will_build(total, "a '%' formatting result")


# --------------------------------------------------------------------------- operators


BIG_INT_BITS_PER_STEP = 1 << 21
"""Multiplying or dividing integers of a and b bits costs a step per 2**21 of a * b
(measured: 49,000 by 30,000 bits takes about 150 us, some 700 steps)."""


def _big_int_steps(left: Any, right: Any) -> int:
    if isinstance(left, int) and isinstance(right, int):
        return left.bit_length() * right.bit_length() // BIG_INT_BITS_PER_STEP
    return 0


def bounded_binop(budget: RenderBudget, operator: str, left: Any, right: Any) -> Any:
    """``left <operator> right`` for the operators the sandbox intercepts (``* ** % + //``)."""
    budget.step()
    if operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            bits = right * abs(left).bit_length()
            if bits > MAX_POWER_BITS:
                raise TemplateBudgetError(f"{left} ** {right} is too large (over {MAX_POWER_BITS:,} bits)")
            budget.step(bits * bits // BIG_INT_BITS_PER_STEP)
        return operator_module.pow(left, right)
    # Schoolbook division and multiplication of big integers take a * b digit operations.
    budget.step(_big_int_steps(left, right))
    if operator == "//":
        return operator_module.floordiv(left, right)
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_POWER_BITS:
            raise TemplateBudgetError(
                f"multiplying integers of {left.bit_length():,} and {right.bit_length():,} "
                f"bits is too large (over {MAX_POWER_BITS:,} bits)"
            )
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
                budget.will_build(len(sequence) * max(count, 0), f"repeating a {type(sequence).__name__}")
        return operator_module.mul(left, right)
    if operator == "+":
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            budget.will_build(len(left) + len(right), f"adding two {type(left).__name__}s")
        return operator_module.add(left, right)
    if operator == "%":
        if isinstance(left, str):
            check_percent(budget, left)
            check_printable(right)
            return budget.grew(left % right, left, "a '%' formatting result")
        return operator_module.mod(left, right)
    raise SecurityError(f"operator {operator!r} is not bounded by the sandbox")  # pragma: no cover


# --------------------------------------------------------------------------- str methods


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _replaced_size(text: str, old: Any, new: Any, count: Any) -> int:
    old, new = str(old), str(new)
    found = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def _joined_size(separator: str, items: list[Any]) -> int:
    return sum(len(item) if isinstance(item, str) else len(str(item)) for item in items) + len(separator) * max(
        len(items) - 1, 0
    )


_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill"})


def check_str_method(
    budget: RenderBudget, text: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Refuse a call of ``text.<name>(...)`` that would build too much; the arguments to call
    it with (``join``'s iterable is read once, here)."""
    if name in _WIDTH_METHODS:
        width = _argument(args, kwargs, 0, "width", 0)
        if isinstance(width, int):
            budget.will_build(max(width, len(text)), f"str.{name}")
    elif name == "expandtabs":
        tabsize = _argument(args, kwargs, 0, "tabsize", 8)
        if isinstance(tabsize, int):
            budget.will_build(len(text) + text.count("\t") * max(tabsize, 0), "str.expandtabs")
    elif name == "replace" and len(args) >= 2:
        budget.will_build(
            _replaced_size(text, args[0], args[1], _argument(args, kwargs, 2, "count", -1)), "str.replace"
        )
    elif name == "join" and args:
        items = list(args[0])
        budget.will_build(_joined_size(text, items), "str.join")
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(value) for value in args[0].values() if isinstance(value, str)), default=1)
        budget.will_build(len(text) * max(longest, 1), "str.translate")
    return args


def format_method_of(obj: Any) -> str | None:
    """The string of a sandboxed ``'...'.format`` / ``format_map`` (Jinja wraps them at
    attribute access), or None."""
    wrapped = getattr(obj, "__wrapped__", None)
    bound_to = getattr(wrapped, "__self__", None)
    if getattr(wrapped, "__name__", None) in ("format", "format_map") and isinstance(bound_to, str):
        return bound_to
    return None


# --------------------------------------------------------------------------- filters


def _check_center(budget: RenderBudget, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    width = _argument(args, kwargs, 0, "width", 80)
    if isinstance(width, int):
        budget.will_build(max(width, len(str(value))), "the center filter's result")


def _check_indent(budget: RenderBudget, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    width = _argument(args, kwargs, 0, "width", 4)
    text = str(value)
    per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    budget.will_build(len(text) + (text.count("\n") + 1) * max(per_line, 0), "the indent filter's result")


def _check_replace(budget: RenderBudget, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if len(args) >= 2:
        size = _replaced_size(str(value), args[0], args[1], _argument(args, kwargs, 2, "count", None))
        budget.will_build(size, "the replace filter's result")


def _check_format(budget: RenderBudget, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    check_percent(budget, str(value))
    check_printable((args, dict(kwargs)))


def _check_printable(budget: RenderBudget, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    check_printable(value)


def _check_fill(name: str) -> Callable[..., None]:
    def check(budget: RenderBudget, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        count = _argument(args, kwargs, 0, "linecount" if name == "batch" else "slices", 0)
        if isinstance(count, int):
            budget.will_build(count, f"the {name} filter's result")

    return check


def _check_wordwrap(budget: RenderBudget, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    width = _argument(args, kwargs, 0, "width", 79)
    wrapstring = _argument(args, kwargs, 2, "wrapstring", None)
    text = str(value)
    if isinstance(width, int):
        breaks = len(text) // max(width, 1) + text.count(" ") + 1
        budget.will_build(len(text) + breaks * len(str(wrapstring or "\n")), "the wordwrap filter's result")


def _check_tojson(budget: RenderBudget, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    indent = _argument(args, kwargs, 0, "indent", None)
    if isinstance(indent, int) and indent > MAX_JSON_INDENT:
        raise TemplateBudgetError(f"tojson's indent of {indent} is too large (at most {MAX_JSON_INDENT})")


_FILTER_CHECKS: dict[str, Callable[[RenderBudget, Any, tuple[Any, ...], Mapping[str, Any]], None]] = {
    "center": _check_center,
    "indent": _check_indent,
    "replace": _check_replace,
    "format": _check_format,
    "batch": _check_fill("batch"),
    "slice": _check_fill("slice"),
    "wordwrap": _check_wordwrap,
    "tojson": _check_tojson,
    "string": _check_printable,
    "pprint": _check_printable,
}


def _join(context: Any, value: Iterable[Any], d: Any = "", attribute: Any = None) -> str:
    """The join filter, counting as it goes (Jinja's joins whatever it is given at once)."""
    budget: RenderBudget = context.budget
    value = charged_input(budget, "join", value)
    if attribute is not None:
        value = map(make_attrgetter(context.environment, attribute), value)
    separator = d if isinstance(d, str) else str(d)
    parts: list[str] = []
    total = 0
    for item in value:
        text = text_of(item)
        total += len(text) + (len(separator) if parts else 0)
        if total > budget.limits.max_chars:
            budget.will_build(total, "the join filter's result")
        parts.append(text)
    budget.will_build(total, "the join filter's result")
    return separator.join(parts)


def _sum(context: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    """The sum filter; lists and tuples are concatenated once (Python's sum copies the
    growing result at every item: quadratic)."""
    budget: RenderBudget = context.budget
    iterable = charged_input(budget, "sum", iterable)
    if attribute is not None:
        iterable = map(make_attrgetter(context.environment, attribute), iterable)
    items = list(iterable)
    budget.step(len(items))
    if isinstance(start, (list, tuple)) and all(isinstance(item, type(start)) for item in items):
        budget.will_build(len(start) + sum(map(len, items)), "the sum filter's result")
        return type(start)(item for part in (start, *items) for item in part)
    total = start
    for item in items:
        total = bounded_binop(budget, "+", total, item) if not isinstance(total, (int, float)) else total + item
    return total


_REPLACED_FILTERS: dict[str, Callable[..., Any]] = {"join": _join, "sum": _sum}


def budgeted_filters(filters: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Jinja's filters, each spending a step per call, checked before it builds a large
    value and charged for what it builds; ``random`` left out (see REFUSED_FILTERS)."""
    wrapped = {}
    for name, function in filters.items():
        if name in REFUSED_FILTERS:
            continue
        replacement = _REPLACED_FILTERS.get(name)
        wrapped[name] = jinja2.pass_context(replacement) if replacement else _budgeted(name, function)
    return wrapped


CONSTANT_TIME_FILTERS = frozenset({"length", "count", "first", "last", "default", "d", "attr"})
"""Filters that do not read all of a list or string they are given (``len``, one item)."""
SORTING_FILTERS = frozenset({"sort", "dictsort", "groupby", "unique"})
"""Filters that sort their input (or hash every item with a key function): a step per item
and per comparison round (n log n)."""
STRING_SCANNING_FILTERS = frozenset(
    {
        "upper",
        "lower",
        "capitalize",
        "trim",
        "replace",
        "reverse",
        "list",
        "string",
        "indent",
        "center",
        "truncate",
        "format",
        "e",
        "escape",
        "forceescape",
        "safe",
        "int",
        "float",
        "tojson",
        "wordwrap",
        "striptags",
        "urlencode",
        "filesizeformat",
    }
)
"""Filters that read a string in C (or with one regular expression): a step per
``CHARS_PER_STEP`` characters. Any other filter given a string reads it character by
character in Python (``max``, ``unique``, ``map``...): a step per character."""
ITEM_STEPS = {
    "selectattr": 4,
    "rejectattr": 4,
    "map": 4,
    "groupby": 4,
    "pprint": 4,
    "xmlattr": 4,
    "urlize": 12,
    "title": 2,
    "urlencode": 2,
}
"""Filters slower per item (or character) than a plain step, measured: the sandbox's
attribute lookup per item, pprint's Python formatting, urlize's and title's regular
expressions per word (urlize of a list reads its text, several characters per item)."""


def charged_input(budget: RenderBudget, name: str, value: Any) -> Any:
    """Spend what filter ``name`` will take to read ``value``, and the value to give it.

    A filter's cost grows with its input, not with the number of calls: ``max`` of a
    100,000-item range takes milliseconds. A list, mapping or range is read item by item
    with a key function or a Python loop (a step per item); a string in C by most filters
    (a step per ``CHARS_PER_STEP`` characters), character by character by the others; an
    iterator of unknown length (a generator of ``map`` or ``select``, a loop) is charged as
    it is read.
    """
    if name in CONSTANT_TIME_FILTERS and not isinstance(value, Iterator):
        return value
    if isinstance(value, str):
        if name in STRING_SCANNING_FILTERS:
            budget.step(1 + len(value) // CHARS_PER_STEP)
            return value
    elif isinstance(value, Iterator):
        return budget.counted(value)
    size = size_hint(value)
    if name in SORTING_FILTERS and size > 1:
        size *= 1 + size.bit_length() // 4
    budget.step(1 + size * ITEM_STEPS.get(name, 1))
    return value


def _budgeted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    pass_arg = _PassArg.from_obj(function)
    check = _FILTER_CHECKS.get(name)
    what = f"the {name} filter's result"

    # pass_context also keeps Jinja from running the filter at compile time (constant
    # folding), where no budget applies.
    @jinja2.pass_context
    def budgeted(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget: RenderBudget = context.budget
        value = charged_input(budget, name, value)
        if check is not None:
            check(budget, value, args, kwargs)
        if pass_arg is _PassArg.context:
            result = function(context, value, *args, **kwargs)
        elif pass_arg is _PassArg.eval_context:
            result = function(context.eval_ctx, value, *args, **kwargs)
        elif pass_arg is _PassArg.environment:
            result = function(context.environment, value, *args, **kwargs)
        else:
            result = function(value, *args, **kwargs)
        if isinstance(result, str) and not isinstance(value, (str, int, float)):
            check_printable(value)  # it wrote a function or generator as text (``| e``, ``| trim``...)
        return budget.grew(result, value, what)

    budgeted.__name__ = budgeted.__qualname__ = f"{name}_filter"
    return budgeted


# --------------------------------------------------------------------------- tests

_CONTAINER_TESTS = frozenset({"in"})
_COMPARING_TESTS = frozenset(
    {"==", "eq", "equalto", "!=", "ne", ">", "gt", "greaterthan", "ge", ">=", "<", "lt", "lessthan", "<=", "le"}
)
_STRING_TESTS = frozenset({"lower", "upper"})


def budgeted_tests(tests: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Jinja's tests; those that scan a list or string (``is in``, ``is eq``, ``is lower``...,
    also through ``select``) charged like the operators they stand for; ``sameas`` left out
    (see REFUSED_TESTS)."""
    wrapped = {name: function for name, function in tests.items() if name not in REFUSED_TESTS}
    for name, function in wrapped.items():
        if name in _CONTAINER_TESTS or name in _COMPARING_TESTS or name in _STRING_TESTS:
            wrapped[name] = _budgeted_test(name, function)
    return wrapped


def _budgeted_test(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @jinja2.pass_context
    def budgeted(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget: RenderBudget = context.budget
        if name in _STRING_TESTS:
            budget.scan(value)
        elif args:
            args = (budget.container(args[0]) if name in _CONTAINER_TESTS else budget.compared(args[0]), *args[1:])
        return function(value, *args, **kwargs)

    budgeted.__name__ = budgeted.__qualname__ = f"{name}_test"
    return budgeted


def charge_method_call(
    budget: RenderBudget, owner: Any, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    """A method of a string, list or tuple reads its owner (``count``, ``find``, ``split``,
    ``index``...) and its arguments; a mapping's methods are lookups or views (charged
    when read)."""
    size = sum(map(size_hint, args)) + sum(map(size_hint, kwargs.values())) if args or kwargs else 0
    if isinstance(owner, (str, list, tuple)) and name not in ("startswith", "endswith"):
        size += len(owner)
    elif isinstance(owner, Mapping) and name == "copy":
        size += len(owner)
    if size >= CHARS_PER_STEP:
        budget.step(size // CHARS_PER_STEP)
