"""Recognising templates and expressions in configuration strings, and parsing them.

Some configuration keys hold *expressions* (a condition's ``expression``, a loop's
``condition``), written bare (``inputs.score > 0.5``) or wrapped (``{{ inputs.score > 0.5 }}``);
every other string is a template when it holds ``{{`` or ``{%``. Rendering and reference
analysis share these helpers, so they agree on what a string is.
"""

from __future__ import annotations

import re

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser

from builder.templates.sandbox import get_environment

_SINGLE_EXPRESSION = re.compile(r"\A\s*\{\{(?P<inner>.*)\}\}\s*\Z", re.DOTALL)


def is_template(text: str) -> bool:
    """True when ``text`` contains template syntax (``{{`` or ``{%``)."""
    return "{{" in text or "{%" in text


def single_expression(text: str) -> str | None:
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


def expression_source(expression: str) -> str:
    """An expression-key string, bare or wrapped in one ``{{ }}``, as bare expression text."""
    inner = single_expression(expression)
    return expression if inner is None else inner


def parse_expression(source: str) -> nodes.Expr:
    """Parse exactly like ``Environment.compile_expression`` does, so checks agree with runs."""
    env = get_environment()
    parser = Parser(env, source, state="variable")
    expr = parser.parse_expression()
    if not parser.stream.eos:
        raise TemplateSyntaxError("unexpected text after the expression", parser.stream.current.lineno, None, None)
    return expr


def expression_as_template(expr: nodes.Expr) -> nodes.Template:
    return nodes.Template([nodes.Output([expr], lineno=1)], lineno=1)


_SYNTAX_WORDS = {
    "'end of print statement'": "'}}'",
    "'end of statement block'": "'%}'",
    "'end of template'": "end of text",
    "end of template": "end of text",
}


def syntax_message(exc: TemplateSyntaxError, *, expression: bool, source: str) -> str:
    """A syntax error in user words (Jinja's token names replaced by what the user typed)."""
    text = exc.message or "invalid syntax"
    for jargon, plain in _SYNTAX_WORDS.items():
        text = text.replace(jargon, plain)
    if expression and is_template(source) and single_expression(source) is None:
        return (
            "expected one expression, bare (inputs.score > 0.5) or wrapped in a single {{ ... }}, "
            f"not text mixed with template tags: {text}"
        )
    return f"template syntax error: {text}"


_DELIMITERS = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")
_BRACKETS = re.compile(r"[()\[\]{}]")
_OPENING = frozenset("([{")


def bracket_depth(text: str) -> int:
    """The most brackets ``( [ {`` open at once in ``text``, template delimiters (``{{``,
    ``{%``...) aside. Counted without parsing, so a string too deep for Jinja's recursive
    parser is refused before it reaches it; brackets in string literals count too (a
    template with 32 open brackets inside quotes is not a real one)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_DELIMITERS.sub("", text)):
        if match.group() in _OPENING:
            depth += 1
            if depth > deepest:
                deepest = depth
        elif depth:
            depth -= 1
    return deepest
