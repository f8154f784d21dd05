"""Sandboxed Jinja2 templates and expressions found in node configuration.

Every string in a node's configuration may be a template (``"Hello {{ inputs.name }}"``).
Some keys hold *expressions* instead (a condition's ``expression``, a loop's ``condition``),
written bare (``inputs.score > 0.5``) or wrapped (``{{ inputs.score > 0.5 }}``).

Rules users notice:

* A string that is exactly one ``{{ expression }}`` keeps the expression's Python type
  (``"{{ inputs.count }}"`` gives ``3``, not ``"3"``); any other template renders to a string,
  where objects, lists, booleans and None are written as JSON (``true``, ``null``, ``[1, 2]``).
* A missing name or attribute is always an error naming the field and what is missing;
  nothing silently renders as an empty string.
* For a mapping, ``a.items`` means the key ``"items"`` when the mapping has one, not ``dict.items``.
* Templates run in Jinja's immutable sandbox: no private attributes, no mutation of lists/dicts.
  The sandbox does not bound CPU or memory (a huge ``'x' * 10**9`` still runs).

This module is the bottom layer of ``builder``: pure, no Prefect/FastAPI imports.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections import ChainMap
from collections.abc import Iterator, Mapping, MappingView, Sequence
from typing import Any, NamedTuple

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

__all__ = [
    "EnvNamespace",
    "TemplateError",
    "TemplateRefs",
    "TemplateRenderError",
    "evaluate_expression",
    "find_references",
    "get_environment",
    "is_template",
    "render_value",
]

ENV_ALLOWLIST_SETTING = "FLOWMAESTRO_ENV_ALLOWLIST"


# --------------------------------------------------------------------------- errors


class TemplateError(ValueError):
    """A template that cannot be parsed (syntax).

    ``message`` never repeats the field, so callers can prefix it themselves;
    ``str(error)`` is ``"<field>: <message>"``.
    """

    def __init__(self, message: str, field: str = "", lineno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.lineno = lineno

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (Prefect results); keep field and line.
        return type(self), (self.message, self.field, self.lineno)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class TemplateRenderError(ValueError):
    """Evaluating a template failed at run time (missing name/attribute, sandbox violation, type error).

    ``message`` never repeats the field; ``str(error)`` is ``"<field>: <message>"``.
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (Prefect results); keep the field.
        return type(self), (self.message, self.field)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


# --------------------------------------------------------------------------- env namespace


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


# --------------------------------------------------------------------------- environment


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


_MAPPING_METHODS = frozenset({"get", "keys", "items", "values"})


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    """Immutable sandbox where mapping keys beat methods of the same name.

    Workflow data is JSON: ``fetch.items`` must read the key ``"items"``, not ``dict.items``.
    """

    def __init__(self) -> None:
        super().__init__(
            undefined=_ExplainingUndefined,
            autoescape=False,
            keep_trailing_newline=True,  # "line\n" in a config must stay "line\n"
            finalize=_finalize_output,
        )

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
    return value


def _json_fallback(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


@functools.cache
def get_environment() -> _SandboxEnvironment:
    """The shared sandbox environment (created on first use)."""
    return _SandboxEnvironment()


# --------------------------------------------------------------------------- syntax helpers


_SINGLE_EXPRESSION = re.compile(r"\A\s*\{\{(?P<inner>.*)\}\}\s*\Z", re.DOTALL)


def is_template(text: str) -> bool:
    """True when ``text`` contains template syntax (``{{`` or ``{%``)."""
    return "{{" in text or "{%" in text


def _single_expression(text: str) -> str | None:
    """The inner expression of a string that is exactly one ``{{ ... }}``, else None."""
    match = _SINGLE_EXPRESSION.match(text)
    if match is None:
        return None
    inner = match.group("inner")
    if "{{" in inner or "}}" in inner or "{%" in inner:
        return None
    # Whitespace control ("{{- x -}}") means nothing for a lone expression; a "-" glued
    # to the braces is that marker, not a minus sign (Jinja's lexer reads it the same way).
    if inner.startswith(("-", "+")):
        inner = inner[1:]
    if inner.endswith("-"):
        inner = inner[:-1]
    return inner


def _expression_source(expression: str) -> str:
    """An expression-key string, bare or wrapped in one ``{{ }}``, as bare expression text."""
    inner = _single_expression(expression)
    return expression if inner is None else inner


def _parse_expression(source: str) -> nodes.Expr:
    """Parse exactly like ``Environment.compile_expression`` does, so checks agree with runs."""
    env = get_environment()
    parser = Parser(env, source, state="variable")
    expr = parser.parse_expression()
    if not parser.stream.eos:
        raise TemplateSyntaxError("unexpected text after the expression", parser.stream.current.lineno, None, None)
    return expr


def _expression_as_template(expr: nodes.Expr) -> nodes.Template:
    return nodes.Template([nodes.Output([expr], lineno=1)], lineno=1)


_SYNTAX_WORDS = {
    "'end of print statement'": "'}}'",
    "'end of statement block'": "'%}'",
    "'end of template'": "end of text",
    "end of template": "end of text",
}


def _syntax_message(exc: TemplateSyntaxError, *, expression: bool, source: str) -> str:
    """A syntax error in user words (Jinja's token names replaced by what the user typed)."""
    text = exc.message or "invalid syntax"
    for jargon, plain in _SYNTAX_WORDS.items():
        text = text.replace(jargon, plain)
    if expression and is_template(source) and _single_expression(source) is None:
        return ("expected one expression, bare (inputs.score > 0.5) or wrapped in a single {{ ... }}, "
                f"not text mixed with template tags: {text}")
    return f"template syntax error: {text}"


# --------------------------------------------------------------------------- compilation caches


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
    tree = _parse_expression(source)  # first, for our wording of syntax errors
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


# --------------------------------------------------------------------------- evaluation


def _context_vars(scope: Mapping[str, Any], template: jinja2.Template) -> ChainMap[str, Any]:
    # The scope holds every node's output (tens of thousands on big canvases); Jinja's
    # render() copies it per call, a ChainMap with the globals does not.
    return ChainMap(scope, template.globals)  # type: ignore[arg-type]


def _run_template(text: str, scope: Mapping[str, Any]) -> str:
    template = _compiled_template(text)
    context = template.new_context(_context_vars(scope, template), shared=True)
    return get_environment().concat(template.root_render_func(context))  # type: ignore[attr-defined]


def _run_expression(source: str, scope: Mapping[str, Any]) -> Any:
    compiled, may_hold_undefined = _compiled_expression(source)
    # TemplateExpression.__call__ copies its arguments into a dict; run its template
    # directly instead (same steps, without the copy).
    template = compiled._template
    context = template.new_context(_context_vars(scope, template), shared=True)
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
    return result


def _raise_if_undefined_inside(value: Any) -> None:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, Mapping):
        for item in value.values():
            _raise_if_undefined_inside(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _raise_if_undefined_inside(item)


def _evaluate(text: str, scope: Mapping[str, Any], field: str, *, as_expression: bool) -> Any:
    """Evaluate one string; every failure becomes a TemplateRenderError naming ``field``."""
    inner = _expression_source(text) if as_expression else _single_expression(text)
    try:
        if inner is not None:
            if not inner.strip():
                raise TemplateRenderError("the expression is empty", field)
            return _run_expression(inner, scope)
        return _run_template(text, scope)
    except TemplateRenderError as exc:
        raise TemplateRenderError(exc.message, field) from exc
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(_syntax_message(exc, expression=as_expression, source=text), field) from exc
    except SecurityError as exc:
        raise TemplateRenderError(f"refused by the template sandbox: {exc.message}", field) from exc
    except UndefinedError as exc:
        source = inner if inner is not None else text
        raise TemplateRenderError(_explain_undefined(exc, source, inner is not None, scope), field) from exc
    except jinja2.TemplateError as exc:
        raise TemplateRenderError(exc.message or type(exc).__name__, field) from exc
    except Exception as exc:  # user code: TypeError, ZeroDivisionError, OverflowError, ...
        raise TemplateRenderError(str(exc) or type(exc).__name__, field) from exc


def render_value(
    value: Any,
    scope: Mapping[str, Any],
    *,
    expression_keys: frozenset[str] = frozenset(),
    field: str = "data",
) -> Any:
    """Render every template string inside ``value`` (dicts and lists, recursively).

    Dict keys are never rendered. A string directly under a dict key in
    ``expression_keys`` is an expression (bare or wrapped). Returns new, plain containers
    (any mapping gives a ``dict``, any list or tuple a ``list``, so a plan's read-only data
    renders to values a handler may change) and never mutates ``value``. Raises
    :class:`TemplateRenderError` whose ``field`` is the dotted path of the failing string
    (``data.conditions[0].expression``).
    """
    if isinstance(value, str):
        return _evaluate(value, scope, field, as_expression=False) if is_template(value) else value
    if isinstance(value, Mapping):
        rendered = {}
        for key, item in value.items():
            item_field = f"{field}.{key}"
            if isinstance(item, str) and key in expression_keys:
                rendered[key] = _evaluate(item, scope, item_field, as_expression=True)
            else:
                rendered[key] = render_value(item, scope, expression_keys=expression_keys, field=item_field)
        return rendered
    if isinstance(value, (list, tuple)):
        return [
            render_value(item, scope, expression_keys=expression_keys, field=f"{field}[{index}]")
            for index, item in enumerate(value)
        ]
    return value


def evaluate_expression(expression: str, scope: Mapping[str, Any], *, field: str = "expression") -> Any:
    """Evaluate an expression written bare (``a > 1``) or wrapped (``{{ a > 1 }}``) to its Python value."""
    return _evaluate(expression, scope, field, as_expression=True)


# --------------------------------------------------------------------------- explaining missing values


def _explain_undefined(exc: UndefinedError, source: str, is_expression: bool, scope: Mapping[str, Any]) -> str:
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
    kinds = {dict: "an object", list: "a list", tuple: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number"}
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
        tree = _parse_expression(source) if is_expression else get_environment().parse(source)
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
            return scope[node.name] if node.name in scope else _UNRESOLVED
        base = _resolve(node.node, scope)
        if base is _UNRESOLVED:
            return _UNRESOLVED
        if isinstance(node, nodes.Getattr):
            value = env.getattr(base, node.attr)
        else:
            value = env.getitem(base, node.arg.value)
    except Exception:
        return _UNRESOLVED
    return _UNRESOLVED if isinstance(value, jinja2.Undefined) else value


# --------------------------------------------------------------------------- references (compile time)


class TemplateRefs(NamedTuple):
    """What one template/expression string reads, for the compiler's reference checks.

    ``field``: dotted path of the string this came from. ``names``: top-level names read
    freely (``inputs``, ``fetch``, ``nodes``...); names bound inside the template
    (``{% for x %}``, ``{% set %}``) and names Jinja provides (``range``...) are excluded.
    ``node_keys``: constant keys used as ``nodes["some-id"]`` / ``nodes.some_id``.
    ``error``: the syntax error when the string does not parse (then names and node_keys
    are empty).
    """

    field: str
    names: frozenset[str]
    node_keys: frozenset[str]
    error: TemplateError | None


class _Analysis(NamedTuple):
    names: frozenset[str]
    node_keys: frozenset[str]
    error_message: str | None
    error_lineno: int | None


_NO_NAMES: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=65536)
def _analyse(text: str, as_expression: bool) -> _Analysis:
    """What one string reads; cached because canvases repeat the same strings a lot.

    Exact in every case: the fast path (a regex for lookup paths, then a token-level
    reader of the expression grammar) answers for the usual strings, Jinja's parser for
    everything else (block tags, slices, unknown filters, syntax errors, ...).
    """
    return _analyse_tokens(text, as_expression) or _analyse_parsed(text, as_expression)


# Most tags only interpolate a lookup path ("https://x/{{ fetch.body.id }}",
# '{{ nodes["my-node"].x }}'): one regex reads those. Jinja's parser takes ~0.1-0.4 ms
# per string, seconds on 10k-node canvases.
# (Possessive quantifiers: a string that is not a path fails at once, without backtracking.)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*+"
_INDEX = r"(?:0|[1-9][0-9]*+)"  # Jinja reads 007 as 00 then 7, a syntax error
_STEP = rf"""\.{_IDENT}|\[(?:"[^"\\{{}}]*+"|'[^'\\{{}}]*+'|{_INDEX})\]"""
# A whole expression that is a lookup path: its head and, when it is a name or a string
# key, its first step (for nodes["id"] / nodes.id).
_LOOKUP = re.compile(rf"""[ \t]*+(?P<head>{_IDENT})(?:\.(?P<attr>{_IDENT})|\["(?P<dq>[^"\\{{}}]*+)"\]"""
                     rf"""|\['(?P<sq>[^'\\{{}}]*+)'\]|\[{_INDEX}\])?+(?:{_STEP})*+[ \t]*+""")
# Words Jinja reads as constants or operators, not as variable names.
_NOT_NAMES = frozenset({"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else"})


def _analyse_lookups(text: str, as_expression: bool) -> _Analysis | None:
    """The fast path restricted to strings whose every expression is a lookup path."""
    if as_expression:
        parts: list[str] | None = [_expression_source(text)]
    elif "{%" in text or "{#" in text:
        return None
    else:
        parts = _tag_sources(text)
    if not parts:
        return None
    names: set[str] = set()
    keys: set[str] = set()
    for part in parts:
        if not _read_lookup(part, names, keys):
            return None
    return _Analysis(frozenset(names), frozenset(keys) if keys and "nodes" in names else _NO_NAMES, None, None)


def _read_lookup(source: str, names: set[str], keys: set[str]) -> bool | None:
    """Read a lookup path: True when read, None when it is not one (or starts with a
    word Jinja does not read as a name)."""
    match = _LOOKUP.fullmatch(source)
    if match is None:
        return None
    head = match.group("head")
    if head in _NOT_NAMES:
        return None
    if head not in _jinja_globals():
        names.add(head)
        if head == "nodes":
            for key in match.group("attr", "dq", "sq"):
                if key is not None:
                    keys.add(key)
                    break
    return True


def _tag_sources(text: str) -> list[str] | None:
    """The expressions of a template's ``{{ ... }}`` tags (whitespace control removed), or
    None when a tag is not closed."""
    single = _single_expression(text)
    if single is not None:
        return [single]
    parts = []
    start = text.find("{{")
    while start >= 0:
        start += 2
        if text.startswith(("-", "+"), start):  # whitespace control
            start += 1
        # The tag ends at the first "}}": one inside a string or within brackets leaves
        # a quote or a bracket unclosed, which the reader refuses.
        end = text.find("}}", start)
        if end < 0:
            return None
        parts.append(text[start:end - 1] if end > start and text[end - 1] == "-" else text[start:end])
        start = text.find("{{", end + 2)
    return parts


# Strings with operators, filters, tests, calls or literals ("{{ a | tojson }}",
# "score > 0.5", "{{ x if y else z }}") are read token by token: a small recogniser of
# Jinja's expression grammar (the same productions as ``jinja2.parser.Parser``, without
# building a tree) collects the free names and ``nodes[...]`` keys about 10x faster than
# the parser. It is conservative: whatever it does not know for certain (block tags,
# comments, slices, tuples, escapes in strings, unusual numbers, unknown filters or
# tests, syntax errors) makes it answer None, and the parser decides.
# One token per match, whitespace skipped; the final "." takes any other character so that
# nothing is skipped silently (it is then refused, or read as Jinja would: see _tokenize).
_TOKEN = re.compile(r"""\s*+(
    [A-Za-z_][A-Za-z0-9_]*+
  | // | \*\* | == | != | <= | >= | [-+*/%~<>=()\[\]{}.,|:]
  | "[^"\\\r]*+" | '[^'\\\r]*+'
  | (?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?![\w.])
  | .
)""", re.VERBOSE | re.DOTALL)
_FIRST_CHAR = {**{c: "name" for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"},
               **{c: "num" for c in "0123456789"}, '"': "str", "'": "str"}
_OPERATORS = frozenset({"//", "**", "==", "!=", "<=", ">=", "-", "+", "*", "/", "%", "~", "<", ">", "=", "(", ")",
                        "[", "]", "{", "}", ".", ",", "|", ":"})
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "if", "else"})
_CONSTANTS = frozenset({"true", "false", "none", "True", "False", "None"})
# The kind of a name token: a keyword is its own kind, a constant "const", others "name".
_WORD_KIND = {**{word: word for word in _KEYWORDS}, **{word: "const" for word in _CONSTANTS}}
_NAME_KINDS = frozenset({"name", "const", *_KEYWORDS})  # what may follow "." or "|", or name a test/keyword
_BINARY = frozenset({"+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", "<=", ">", ">=", "in"})
_TEST_ARGUMENT = frozenset({"num", "str", "[", "{", ".", "name", "const", "not", "in", "is", "if"})
_END = "<end>"
_PADDING = (_END, _END)
# Whole tokens whose kind is not given by their first character; a lone quote is a string
# that does not close.
_TOKEN_KIND = {**{op: op for op in _OPERATORS}, **_WORD_KIND, '"': "?", "'": "?"}


def _tokenize(source: str) -> tuple[list[str], list[str]] | None:
    """The tokens of one expression: kinds and texts, both ending with ``_END`` (twice). A kind is
    "num", "str", "name", "const" (true, none, ...), a keyword (and, if, ...) or the
    operator itself. None when ``source`` holds a character this reader does not handle
    (escapes or a line break in a string, an unclosed string, ``!``, ``;``, non-ASCII
    names...). Brackets are not matched here: the reader refuses what does not close.

    A character that only the catch-all matched is refused, except a digit glued to what
    follows (``1.x``, ``1e5``, ``007``): it is read as a number and the next token as
    another, which Jinja reads the same way or the reader refuses (two operands in a row).
    """
    values = _TOKEN.findall(source.rstrip())  # (trailing blanks would reach the catch-all)
    kind_of, first_char = _TOKEN_KIND.get, _FIRST_CHAR.get
    kinds = [kind_of(token) or first_char(token[0]) or "?" for token in values]
    if "?" in kinds:
        return None
    kinds += _PADDING  # the reader looks up to two tokens ahead
    values += ("", "")
    return kinds, values


class _Reader:
    """Recognises one expression over a token list (see ``_tokenize``), mirroring
    ``jinja2.parser.Parser.parse_expression``; every method returns False to give up."""

    __slots__ = ("kinds", "values", "i", "names", "keys", "key_tokens", "filters", "tests", "globals")

    def __init__(self, kinds: list[str], values: list[str], names: set[str], keys: set[str]) -> None:
        env = get_environment()
        self.kinds, self.values, self.i = kinds, values, 0
        self.names, self.keys = names, keys
        self.key_tokens: list[int] = []
        """Positions of the string tokens used as keys (``nodes["id"]``); ``keys`` gets
        the names used as keys (``nodes.id``)."""
        self.filters, self.tests, self.globals = env.filters, env.tests, _jinja_globals()

    def whole(self) -> bool:
        return self.expression() and self.kinds[self.i] == _END

    def expression(self) -> bool:
        """parse_condexpr: ``a``, ``a if b``, ``a if b else c``."""
        if not self.operations():
            return False
        kinds = self.kinds
        while kinds[self.i] == "if":
            self.i += 1
            if not self.operations():
                return False
            if kinds[self.i] == "else":
                self.i += 1
                if not self.expression():
                    return False
        return True

    def operations(self) -> bool:
        """parse_or down to parse_pow, flattened: which operator binds tighter does not
        change what is valid, only where ``not`` may appear (first, or after and/or)."""
        kinds = self.kinds
        while True:
            while kinds[self.i] == "not":
                self.i += 1
            if not self.unary():
                return False
            while True:
                kind = kinds[self.i]
                if kind in _BINARY:  # arithmetic, comparison, "in"
                    self.i += 1
                elif kind == "not" and kinds[self.i + 1] == "in":
                    self.i += 2
                else:
                    break
                if not self.unary():
                    return False
            if kinds[self.i] == "and" or kinds[self.i] == "or":
                self.i += 1
                continue
            return True

    def unary(self) -> bool:
        """parse_unary: signs, a primary, its lookups and calls, then filters and tests."""
        kinds, values = self.kinds, self.values
        i = self.i
        while kinds[i] == "-" or kinds[i] == "+":
            i += 1
        kind = kinds[i]
        is_nodes = False
        if kind == "name":
            value = values[i]
            if value not in self.globals:
                self.names.add(value)
                is_nodes = value == "nodes"
            i += 1
        elif kind == "num" or kind == "const":
            i += 1
        elif kind == "str":
            i += 1
            while kinds[i] == "str":  # adjacent strings are one constant
                i += 1
        elif kind == "(" or kind == "[":
            self.i = i + 1
            if not self.sequence(")" if kind == "(" else "]"):
                return False
            i = self.i
            if kind == "(" and (kinds[i] == "." or kinds[i] == "["):
                return False  # (nodes)["x"] is nodes["x"] to Jinja: leave it to the parser
        elif kind == "{":
            self.i = i
            if not self.mapping():
                return False
            i = self.i
        else:
            return False  # a keyword, an operator, the end
        # parse_postfix
        while True:
            kind = kinds[i]
            if kind == ".":
                if kinds[i + 1] not in _NAME_KINDS:
                    return False
                if is_nodes:
                    self.keys.add(values[i + 1])
                i += 2
            elif kind == "[":
                if is_nodes:  # nodes["id"] / nodes[0]; anything else goes to the parser
                    if kinds[i + 2] != "]" or (kinds[i + 1] != "str" and kinds[i + 1] != "num"):
                        return False
                    if kinds[i + 1] == "str":
                        self.key_tokens.append(i + 1)
                    i += 3
                else:
                    self.i = i + 1
                    if not self.expression():
                        return False
                    i = self.i
                    if kinds[i] != "]":
                        return False
                    i += 1
            elif kind == "(":
                self.i = i
                if not self.call():
                    return False
                i = self.i
            else:
                break
            is_nodes = False
        # parse_filter_expr
        while True:
            kind = kinds[i]
            if kind == "|":
                if kinds[i + 1] not in _NAME_KINDS or values[i + 1] not in self.filters or kinds[i + 2] == ".":
                    return False  # unknown (or dotted) filter: the parser says which
                i += 2
                if kinds[i] == "(":
                    self.i = i
                    if not self.call():
                        return False
                    i = self.i
            elif kind == "is":
                i += 1
                if kinds[i] == "not":
                    i += 1
                test = values[i]
                if kinds[i] not in _NAME_KINDS or test not in self.tests or test == "filter" or test == "test":
                    return False
                i += 1
                if kinds[i] == "(":
                    self.i = i
                    if not self.call():
                        return False
                    i = self.i
                elif kinds[i] in _TEST_ARGUMENT:
                    return False  # a test argument without parentheses, or a dotted name
            elif kind == "(":
                self.i = i
                if not self.call():
                    return False
                i = self.i
            else:
                self.i = i
                return True

    def sequence(self, close: str) -> bool:
        """A parenthesised expression or tuple, or a list literal, after its opening bracket."""
        kinds = self.kinds
        while kinds[self.i] != close:
            if not self.expression():
                return False
            if kinds[self.i] != ",":
                break
            self.i += 1
        if kinds[self.i] != close:
            return False
        self.i += 1
        return True

    def mapping(self) -> bool:
        kinds = self.kinds
        self.i += 1
        while kinds[self.i] != "}":
            if not self.expression() or kinds[self.i] != ":":
                return False
            self.i += 1
            if not self.expression():
                return False
            if kinds[self.i] != ",":
                break
            self.i += 1
        if kinds[self.i] != "}":
            return False
        self.i += 1
        return True

    def call(self) -> bool:
        """parse_call_args: positional arguments, then keyword arguments (no ``*``/``**``)."""
        kinds = self.kinds
        self.i += 1
        keywords = False
        while kinds[self.i] != ")":
            if kinds[self.i] in _NAME_KINDS and kinds[self.i + 1] == "=":
                self.i += 2  # the keyword is not a name read from the scope
                keywords = True
            elif keywords:
                return False
            if not self.expression():
                return False
            if kinds[self.i] != ",":
                break
            self.i += 1
        if kinds[self.i] != ")":
            return False
        self.i += 1
        return True


def _analyse_tokens(text: str, as_expression: bool) -> _Analysis | None:
    """The fast path: None unless every expression of ``text`` is a lookup path or is
    understood by the token reader (then the answer is exactly the parser's)."""
    if as_expression:
        parts = [_expression_source(text)]
        if "}}" in parts[0]:
            return None  # Jinja's lexer would end the expression there
    else:
        if "{%" in text or "{#" in text:
            return None
        parts = _tag_sources(text)
        if not parts:
            return None
    names: set[str] = set()
    keys: set[str] = set()
    for part in parts:
        if not _read_expression(part, names, keys):
            return None
    return _Analysis(frozenset(names), frozenset(keys) if keys and "nodes" in names else _NO_NAMES, None, None)


# Canvases repeat the same expressions with other node ids in them ('nodes["a-1"] | tojson',
# 'nodes["a-2"] | tojson'): an expression is read once per *shape*, its string literals
# blanked, and the keys it reads from nodes[...] are taken back from its own literals.
_LITERAL = re.compile(r""""[^"\\\r{}]*+"|'[^'\\\r{}]*+'""")


def _read_expression(source: str, names: set[str], keys: set[str]) -> bool:
    """Add what one expression (a tag's, or an expression key's) reads; False when the
    fast path cannot tell."""
    if '"' in source or "'" in source:
        literals = _LITERAL.findall(source)
        shape = _LITERAL.sub('""', source)
        # Every quote must belong to a literal with plain text inside (no escapes, line
        # breaks or braces): then the blanked literals are exactly the lexer's strings.
        if "'" in shape or shape.count('"') != 2 * len(literals):
            return False
    else:
        literals, shape = [], source
    entry = _shape_entry(shape)
    if entry is None:
        return False
    shape_names, name_keys, literal_keys = entry
    names |= shape_names
    if name_keys:
        keys |= name_keys
    for position in literal_keys:
        keys.add(literals[position][1:-1])
    return True


@functools.lru_cache(maxsize=16384)
def _shape_entry(shape: str) -> tuple[frozenset[str], frozenset[str], tuple[int, ...]] | None:
    """What an expression whose string literals are all blank reads: its free names, the
    names used as ``nodes.<key>``, and the positions (among its string literals) of those
    used as ``nodes["<key>"]``. None when neither the lookup regex nor the token reader
    can tell."""
    names: set[str] = set()
    keys: set[str] = set()
    match = _LOOKUP.fullmatch(shape)
    if match is not None and match.group("head") not in _NOT_NAMES:
        head = match.group("head")
        if head not in _jinja_globals():
            names.add(head)
            if head == "nodes" and match.group("attr") is not None:
                keys.add(match.group("attr"))
            elif head == "nodes" and (match.group("dq") is not None or match.group("sq") is not None):
                return frozenset(names), frozenset(), (0,)  # the path's first literal
        return frozenset(names), frozenset(keys), ()
    tokens = _tokenize(shape)
    if tokens is None:
        return None
    kinds, values = tokens
    reader = _Reader(kinds, values, names, keys)
    if not reader.whole():
        return None
    literal_keys: tuple[int, ...] = ()
    if reader.key_tokens:
        strings = [index for index, kind in enumerate(kinds) if kind == "str"]
        literal_keys = tuple(strings.index(index) for index in reader.key_tokens)
    return frozenset(names), frozenset(keys), literal_keys


def _analyse_parsed(text: str, as_expression: bool) -> _Analysis:
    """The exact path: parse with Jinja and walk the tree."""
    inner = _expression_source(text) if as_expression else _single_expression(text)
    try:
        if inner is not None:
            if not inner.strip():
                return _Analysis(_NO_NAMES, _NO_NAMES, "the expression is empty", None)
            tree = _expression_as_template(_parse_expression(inner))
        else:
            tree = get_environment().parse(text)
        names, node_keys = _names_and_keys(tree)
    except TemplateSyntaxError as exc:
        return _Analysis(_NO_NAMES, _NO_NAMES, _syntax_message(exc, expression=as_expression, source=text),
                         exc.lineno)
    return _Analysis(names, node_keys if "nodes" in names else _NO_NAMES, None, None)


_SIMPLE_STATEMENTS = (nodes.Output, nodes.If)


class _NeedsJinja(Exception):
    """The tree binds names (for, set, macro, ...): Jinja's own scoping rules decide."""


def _free_names(tree: nodes.Template) -> frozenset[str]:
    """Names the template reads from its scope; raises TemplateSyntaxError for unknown filters/tests."""
    return _names_and_keys(tree)[0]


def _names_and_keys(tree: nodes.Template) -> tuple[frozenset[str], frozenset[str]]:
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
            if not _is_jinja_global(node.name):
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
            if node.name not in env.filters:
                raise TemplateSyntaxError(f"No filter named {node.name!r}.", node.lineno)
        elif kind is nodes.Test:
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


def _is_jinja_global(name: str) -> bool:
    """Names Jinja itself provides (range, dict, namespace, ..., self); like
    ``find_undeclared_variables``, they are not reported."""
    return name in _jinja_globals()


@functools.cache
def _jinja_globals() -> frozenset[str]:
    return frozenset(get_environment().globals) | {"self"}


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


def _refs(text: str, field: str, *, as_expression: bool) -> TemplateRefs:
    analysis = _analyse(text, as_expression)
    error = None
    if analysis.error_message is not None:
        error = TemplateError(analysis.error_message, field, analysis.error_lineno)
    return TemplateRefs(field, analysis.names, analysis.node_keys, error)


def find_references(
    value: Any,
    *,
    expression_keys: frozenset[str] = frozenset(),
    field: str = "data",
) -> list[TemplateRefs]:
    """One :class:`TemplateRefs` per template or expression string inside ``value``.

    Walks dicts and lists exactly like :func:`render_value`; plain strings give nothing.
    """
    found: list[TemplateRefs] = []
    _collect_references(value, expression_keys, field, found)
    return found


_SCALARS = frozenset({int, float, bool, type(None)})


def _is_container(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple)) or (type(value) not in _SCALARS and isinstance(value, Mapping))


def _collect_references(value: Any, expression_keys: frozenset[str], field: str, found: list[TemplateRefs]) -> None:
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            found.append(_refs(value, field, as_expression=False))
    elif isinstance(value, dict) or (type(value) not in _SCALARS and isinstance(value, Mapping)):
        for key, item in value.items():
            if isinstance(item, str):  # (the field path is only built for what is read)
                if key in expression_keys:
                    found.append(_refs(item, f"{field}.{key}", as_expression=True))
                elif "{{" in item or "{%" in item:
                    found.append(_refs(item, f"{field}.{key}", as_expression=False))
            elif type(item) not in _SCALARS and _is_container(item):
                _collect_references(item, expression_keys, f"{field}.{key}", found)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if isinstance(item, str):
                if "{{" in item or "{%" in item:
                    found.append(_refs(item, f"{field}[{index}]", as_expression=False))
            elif type(item) not in _SCALARS and _is_container(item):
                _collect_references(item, expression_keys, f"{field}[{index}]", found)
