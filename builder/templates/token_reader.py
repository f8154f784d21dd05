"""The fast path of reference analysis: what a string reads, without Jinja's parser.

Jinja's parser takes 0.1-0.4 ms per string (its lexer most of it), seconds on a
10k-node canvas. Most strings are simpler than that: a regex reads lookup paths
(``{{ fetch.body.id }}``, ``{{ nodes["my-node"].x }}``), and a small recogniser of Jinja's
expression grammar reads the usual operators, filters, tests, calls and literals, 10x
faster than the parser. Each expression is read once per *shape* (its string literals
blanked), since canvases repeat the same expression with other node ids in it.

Exact or nothing: whatever it does not know for certain, it answers None and the parser
decides (``builder.templates.analysis``). The tests check it against the parser, also on
random strings.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from builder.templates.determinism import REFUSED_GLOBALS
from builder.templates.sandbox import JINJA_GLOBALS, get_environment
from builder.templates.syntax import expression_source, single_expression

_NO_KEYS: frozenset[str] = frozenset()


def read_references(text: str, as_expression: bool) -> tuple[frozenset[str], frozenset[str]] | None:
    """The free names of ``text`` and the keys it reads as ``nodes["<key>"]``/``nodes.<key>``,
    exactly as the parser would find them; None unless every expression of ``text`` is a
    lookup path or is understood by the token reader."""
    if as_expression:
        parts = [expression_source(text)]
        if "}}" in parts[0]:
            return None  # Jinja's lexer would end the expression there
    else:
        if "{%" in text or "{#" in text:
            return None
        tags = _tag_sources(text)
        if not tags:
            return None
        parts = tags
    names: set[str] = set()
    keys: set[str] = set()
    for part in parts:
        if not _read_expression(part, names, keys):
            return None
    return frozenset(names), frozenset(keys) if keys and "nodes" in names else _NO_KEYS


def _tag_sources(text: str) -> list[str] | None:
    """The expressions of a template's ``{{ ... }}`` tags (whitespace control removed), or
    None when a tag is not closed."""
    single = single_expression(text)
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
        parts.append(text[start : end - 1] if end > start and text[end - 1] == "-" else text[start:end])
        start = text.find("{{", end + 2)
    return parts


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
        if head in REFUSED_GLOBALS:
            return None  # the parser words the refusal
        if head not in JINJA_GLOBALS:
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


# Most tags only interpolate a lookup path ("https://x/{{ fetch.body.id }}",
# '{{ nodes["my-node"].x }}'): one regex reads those.
# (Possessive quantifiers: a string that is not a path fails at once, without backtracking.)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*+"
_INDEX = r"(?:0|[1-9][0-9]*+)"  # Jinja reads 007 as 00 then 7, a syntax error
_STEP = rf"""\.{_IDENT}|\[(?:"[^"\\{{}}]*+"|'[^'\\{{}}]*+'|{_INDEX})\]"""
# A whole expression that is a lookup path: its head and, when it is a name or a string
# key, its first step (for nodes["id"] / nodes.id).
_LOOKUP = re.compile(
    rf"""[ \t]*+(?P<head>{_IDENT})(?:\.(?P<attr>{_IDENT})|\["(?P<dq>[^"\\{{}}]*+)"\]"""
    rf"""|\['(?P<sq>[^'\\{{}}]*+)'\]|\[{_INDEX}\])?+(?:{_STEP})*+[ \t]*+"""
)
# Words Jinja reads as constants or operators, not as variable names.
_NOT_NAMES = frozenset({"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else"})


# Strings with operators, filters, tests, calls or literals ("{{ a | tojson }}",
# "score > 0.5", "{{ x if y else z }}") are read token by token: a small recogniser of
# Jinja's expression grammar (the same productions as ``jinja2.parser.Parser``, without
# building a tree) collects the free names and ``nodes[...]`` keys about 10x faster than
# the parser. It is conservative: whatever it does not know for certain (block tags,
# comments, slices, tuples, escapes in strings, unusual numbers, unknown filters or
# tests, syntax errors) makes it answer None, and the parser decides.
# One token per match, whitespace skipped; the final "." takes any other character so that
# nothing is skipped silently (it is then refused, or read as Jinja would: see _tokenize).
_TOKEN = re.compile(
    r"""\s*+(
    [A-Za-z_][A-Za-z0-9_]*+
  | // | \*\* | == | != | <= | >= | [-+*/%~<>=()\[\]{}.,|:]
  | "[^"\\\r]*+" | '[^'\\\r]*+'
  | (?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?![\w.])
  | .
)""",
    re.VERBOSE | re.DOTALL,
)
_FIRST_CHAR = {
    **{c: "name" for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"},
    **{c: "num" for c in "0123456789"},
    '"': "str",
    "'": "str",
}
_OPERATORS = frozenset(
    {
        "//",
        "**",
        "==",
        "!=",
        "<=",
        ">=",
        "-",
        "+",
        "*",
        "/",
        "%",
        "~",
        "<",
        ">",
        "=",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ".",
        ",",
        "|",
        ":",
    }
)
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

    __slots__ = ("filters", "globals", "i", "key_tokens", "keys", "kinds", "names", "tests", "values")

    def __init__(self, kinds: list[str], values: list[str], names: set[str], keys: set[str]) -> None:
        env = get_environment()
        self.kinds, self.values, self.i = kinds, values, 0
        self.names, self.keys = names, keys
        self.key_tokens: list[int] = []
        """Positions of the string tokens used as keys (``nodes["id"]``); ``keys`` gets
        the names used as keys (``nodes.id``)."""
        self.filters, self.tests, self.globals = env.filters, env.tests, JINJA_GLOBALS

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
            if value in REFUSED_GLOBALS:
                return False  # the parser words the refusal
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
                i = self.call_at(i)
                if i < 0:
                    return False
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
                    i = self.call_at(i)
                    if i < 0:
                        return False
            elif kind == "is":
                i += 1
                if kinds[i] == "not":
                    i += 1
                test = values[i]
                if kinds[i] not in _NAME_KINDS or test not in self.tests or test == "filter" or test == "test":
                    return False
                i += 1
                if kinds[i] == "(":
                    i = self.call_at(i)
                    if i < 0:
                        return False
                elif kinds[i] in _TEST_ARGUMENT:
                    return False  # a test argument without parentheses, or a dotted name
            elif kind == "(":
                i = self.call_at(i)
                if i < 0:
                    return False
            else:
                self.i = i
                return True

    def sequence(self, close: str) -> bool:
        """A parenthesised expression or tuple, or a list literal, after its opening bracket."""
        return self.separated(close, self.expression)

    def mapping(self) -> bool:
        self.i += 1
        return self.separated("}", self.pair)

    def pair(self) -> bool:
        if not self.expression() or self.kinds[self.i] != ":":
            return False
        self.i += 1
        return self.expression()

    def call_at(self, i: int) -> int:
        """:meth:`call` from token ``i``: the position after the call, or -1."""
        self.i = i
        return self.i if self.call() else -1

    def call(self) -> bool:
        """parse_call_args: positional arguments, then keyword arguments (no ``*``/``**``)."""
        kinds = self.kinds
        self.i += 1
        keywords = False

        def argument() -> bool:
            nonlocal keywords
            if kinds[self.i] in _NAME_KINDS and kinds[self.i + 1] == "=":
                self.i += 2  # the keyword is not a name read from the scope
                keywords = True
            elif keywords:
                return False
            return self.expression()

        return self.separated(")", argument)

    def separated(self, close: str, item: Callable[[], bool]) -> bool:
        """Items separated by commas (one may end the list) up to ``close``, and past it."""
        kinds = self.kinds
        while kinds[self.i] != close:
            if not item():
                return False
            if kinds[self.i] != ",":
                break
            self.i += 1
        if kinds[self.i] != close:
            return False
        self.i += 1
        return True
