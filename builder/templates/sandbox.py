"""The sandboxed Jinja2 environment every template runs in, and the names it sees.

Templates run in Jinja's immutable sandbox: no private attributes, no mutation of lists or
dicts. Jinja's sandbox bounds neither CPU nor memory; here every loop iteration, call,
filter and intercepted operator spends the render's budget (``budget``), and every
operation that can build a large value from a short template (``'x' * 10**9``,
``'%050000000d' % 0``, ``'{:>99999999}'.format(1)``, ``indent``, ``replace``, ``join``,
``batch``, ``~``...) is checked before it allocates (``bounds``). Nothing a template
computes runs while Jinja compiles it: filters take the context and the operators that
build values are intercepted, so Jinja's constant folding (in the API) leaves them alone.
Non-deterministic names (``lipsum``, the ``random`` filter, the ``sameas`` test) are not
offered at all, and
no object whose text holds its memory address is written as text (``determinism``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, operators
from jinja2.defaults import DEFAULT_NAMESPACE
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment

from builder.templates.bounds import (
    bounded_binop,
    budgeted_filters,
    budgeted_tests,
    charge_method_call,
    check_format,
    check_str_method,
    format_method_of,
)
from builder.templates.budget import CHARS_PER_STEP, DEFAULT_LIMITS, RenderBudget
from builder.templates.determinism import REFUSED_GLOBALS, check_printable
from builder.templates.errors import TemplateRenderError

ENV_ALLOWLIST_SETTING = "FLOWMAESTRO_ENV_ALLOWLIST"

NAMESPACES = frozenset({"inputs", "var", "env", "run", "loop", "parallel", "nodes", "args"})
"""The template namespaces the engine fills (section 8 of the spec); never node ids. ``args``:
the arguments of an agent's tool call, in the templates of its http tools."""


def coalesce(*values: Any) -> Any:
    """The first value that is not none (a skipped node reads as none), else none:
    ``coalesce(refund and refund.body.id, "no refund")``."""
    return next((value for value in values if value is not None), None)


OUR_GLOBALS: dict[str, Any] = {"coalesce": coalesce}
"""Functions FlowMaestro adds to every template."""
JINJA_GLOBALS = frozenset(DEFAULT_NAMESPACE) | {"self"} | frozenset(OUR_GLOBALS)
"""Names every template has (Jinja's ``range``, ``dict``, ``namespace``, ..., ``self``, and
ours, ``coalesce``): ``{{ range.x }}`` reads Jinja's, never a node, so they are not reported
as names a template reads, and no node may take one as its id."""


class EnvNamespace(Mapping[str, str]):
    """The ``env`` namespace: only allowlisted environment variables, and only those that are set.

    Values are copied at construction, so secrets outside the allowlist are never even held.
    Reading a name outside the allowlist raises :class:`TemplateRenderError` explaining why
    (rather than "no such key"), because the usual cause is a missing allowlist entry.
    An allowlisted name that is not set behaves like a missing key (``KeyError``, ``in`` is
    False, ``get()`` returns its default).
    """

    def __init__(self, environ: Mapping[str, str], allowlist: frozenset[str]) -> None:
        self._allowlist = frozenset(allowlist)
        self._values = {name: environ[name] for name in sorted(self._allowlist) if name in environ}

    def __getitem__(self, name: str) -> str:
        if name in self._values:
            return self._values[name]
        if not isinstance(name, str) or name not in self._allowlist:
            raise TemplateRenderError(f"env.{name} is not in {ENV_ALLOWLIST_SETTING}")
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        # Must not go through __getitem__: "X in env" is a question, never an error.
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        # Names only: a repr ends up in logs, values may be credentials.
        return f"EnvNamespace({sorted(self._values)!r})"


class _UndefinedMessage(str):
    """Jinja's error text for an undefined value, carrying the Undefined it describes.

    Jinja raises ``UndefinedError(message)`` from many aliased dunder methods, so the only
    hook that reaches all of them is the message; riding the Undefined along on it lets
    us later say *which* name or attribute was missing, in words a user understands.
    """

    undefined: _ExplainingUndefined


class _ExplainingUndefined(jinja2.StrictUndefined):
    """StrictUndefined whose error message leads back to the missing name/attribute."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        message = _UndefinedMessage(super()._undefined_message)
        message.undefined = self
        return message


MACRO_CALL_STEPS = 30
"""What calling a macro costs (measured: a call of a small macro takes about as long as 30
loop iterations), so recursion runs out of budget as fast as loops do."""

_MAPPING_METHODS = frozenset({"get", "keys", "items", "values"})


class _BudgetStep:
    """Marks the constant the code generator writes as ``context.budget.step()`` (Jinja
    allows no new node types)."""

    def __repr__(self) -> str:
        return "context.budget.step()"


_STEP = _BudgetStep()


def _step_node(lineno: int) -> nodes.Const:
    return nodes.Const(_STEP, lineno=lineno)


class _BudgetedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with the render's budget where Jinja has no hook: every
    loop iteration (body and ``if`` filter), ``~`` and the buffers of macros and blocks."""

    def visit_For(self, node: nodes.For, frame: Any) -> None:
        lineno = node.lineno
        body = [nodes.ExprStmt(_step_node(lineno), lineno=lineno), *node.body]
        test = None if node.test is None else nodes.And(_step_node(lineno), node.test, lineno=lineno)
        counted = nodes.For(node.target, node.iter, body, node.else_, test, node.recursive, lineno=lineno)
        counted.set_environment(self.environment)
        super().visit_For(counted, frame)

    def visit_Const(self, node: nodes.Const, frame: Any) -> None:
        if node.value is _STEP:
            self.write("context.budget.step()")
        else:
            super().visit_Const(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("context.budget.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Operand(self, node: nodes.Operand, frame: Any) -> None:
        # ``x in items`` scans items, ``a == b`` reads both lists or strings: the right
        # operand goes through the budget (a comparison reads at most the shorter side).
        if isinstance(node.expr, nodes.Const) and not isinstance(node.expr.value, (str, tuple)):
            super().visit_Operand(node, frame)
            return
        charge = "container" if node.op in ("in", "notin") else "compared"
        self.write(f" {operators[node.op]} context.budget.{charge}(")
        self.visit(node.expr, frame)
        self.write(")")

    def visit_Getitem(self, node: nodes.Getitem, frame: Any) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        # A slice copies what it selects (Jinja writes it as Python's, outside getitem).
        self.write("context.budget.sliced(")
        self.visit(node.node, frame)
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            self.write(", ")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write(")")

    def buffer(self, frame: Any) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = context.budget.buffer()")


class _BudgetedContext(Context):
    """A render's context, carrying its budget (``render`` gives each render its own; a
    context made elsewhere gets the default limits)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget = RenderBudget(DEFAULT_LIMITS)


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    """Immutable sandbox where mapping keys beat methods of the same name, and every
    operator, call, filter and loop spends the render's budget (``budget``, ``bounds``).

    Workflow data is JSON: ``fetch.items`` must read the key ``"items"``, not ``dict.items``.
    """

    # Intercepted operators go through call_binop, and are never folded into constants
    # while compiling (in the API, outside any budget).
    intercepted_binops = frozenset({"*", "**", "%", "+", "//"})
    code_generator_class = _BudgetedCodeGenerator
    context_class = _BudgetedContext

    def __init__(self) -> None:
        super().__init__(
            undefined=_ExplainingUndefined,
            autoescape=False,
            keep_trailing_newline=True,  # "line\n" in a config must stay "line\n"
            finalize=_finalize_output,
            # No constant folding: what a template computes runs in a render, with its
            # budget, never while Jinja compiles it (in the API).
            optimized=False,
        )
        self.filters = budgeted_filters(self.filters)
        self.tests = budgeted_tests(self.tests)
        for name in REFUSED_GLOBALS:
            del self.globals[name]
        self.globals.update(OUR_GLOBALS)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return bounded_binop(context.budget, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget: RenderBudget = __context.budget
        # A macro (or a recursive loop's loop()) costs about as much as 30 plain steps.
        budget.step(MACRO_CALL_STEPS if isinstance(__obj, (Macro, LoopContext)) else 1)
        owner = getattr(__obj, "__self__", None)
        # Work that grows with the data: a method reading its string or list, arguments
        # copied into the call (``dict(pairs)``, ``f(*items)``).
        charge_method_call(budget, owner, getattr(__obj, "__name__", ""), args, kwargs)
        if len(args) + len(kwargs) > CHARS_PER_STEP:
            budget.step((len(args) + len(kwargs)) // CHARS_PER_STEP)
        if isinstance(owner, str):
            args = check_str_method(budget, owner, getattr(__obj, "__name__", ""), args, kwargs)
        else:
            owner = format_method_of(__obj)
            if owner is not None:
                check_format(budget, owner)
                check_printable((args, kwargs))
        result = super().call(__context, __obj, *args, **kwargs)
        return budget.grew(result, owner, "a call's result") if owner is not None else result

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        if isinstance(obj, EnvNamespace) and attribute not in _MAPPING_METHODS and not attribute.startswith("__"):
            # Not set or not allowlisted: let __getitem__ explain which (the generic
            # fallback would only report "no attribute").
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # Jinja reports unsafe attributes as UndefinedError; make them SecurityError so
        # they read as a sandbox refusal, not as a typo.
        return self.undefined(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe",
            obj=obj,
            name=attribute,
            exc=SecurityError,
        )


def _finalize_output(value: Any) -> Any:
    """How ``{{ value }}`` is written inside a larger string: JSON for non-text values.

    Workflow data is JSON, and users paste these strings into HTTP bodies and prompts,
    so ``{{ payload }}`` gives ``{"a": true}`` rather than Python's ``{'a': True}``.
    """
    if value is None or isinstance(value, (bool, Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=_json_fallback)
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, Iterator) and not isinstance(value, LoopContext):
        # A generator (map, select, reverse...) writes its items, as a single expression
        # gives them, never its repr (which holds its memory address).
        return json.dumps(list(value), ensure_ascii=False, default=_json_fallback)
    check_printable(value)
    return value


def _json_fallback(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    check_printable(value)
    return str(value)


@functools.cache
def get_environment() -> _SandboxEnvironment:
    """The shared sandbox environment (created on first use)."""
    return _SandboxEnvironment()
