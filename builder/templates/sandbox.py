"""The sandboxed Jinja2 environment every template runs in, and the names it sees.

Templates run in Jinja's immutable sandbox: no private attributes, no mutation of lists or
dicts. Jinja's sandbox does not bound CPU or memory; the ways one short template makes a huge
value are refused here: ``'x' * 10**9``, ``9 ** 9999999`` (which Jinja would even compute while
compiling, in the API's event loop), ``'x'.ljust(10**9)``, ``'x' | center(10**9)``.
"""

from __future__ import annotations

import functools
import json
import operator as operator_module
from collections.abc import Iterator, Mapping
from typing import Any

import jinja2
from jinja2.defaults import DEFAULT_NAMESPACE
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from builder.templates.errors import TemplateRenderError

ENV_ALLOWLIST_SETTING = "FLOWMAESTRO_ENV_ALLOWLIST"

NAMESPACES = frozenset({"inputs", "var", "env", "run", "loop", "parallel", "nodes"})
"""The template namespaces the engine fills (section 8 of the spec); never node ids."""
JINJA_GLOBALS = frozenset(DEFAULT_NAMESPACE) | {"self"}
"""Names Jinja itself provides in every template (``range``, ``dict``, ``namespace``, ...,
``self``): ``{{ range.x }}`` reads Jinja's, never a node, so they are not reported as
names a template reads, and no node may take one as its id."""


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


_MAPPING_METHODS = frozenset({"get", "keys", "items", "values"})


MAX_BUILT_LENGTH = 1_000_000
"""The longest string or list ``*``, padding methods and ``center`` may build (10 MB of text
as a template's output is already more than any node should pass on)."""
MAX_POWER_BITS = 100_000
"""The largest integer ``**`` may build, in bits (30,000 digits)."""
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


def _bounded_binop(operator: str, left: Any, right: Any) -> Any:
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if right * abs(left).bit_length() > MAX_POWER_BITS:
            raise SecurityError(f"{left} ** {right} is too large (over {MAX_POWER_BITS} bits)")
    if operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) \
                    and len(sequence) * count > MAX_BUILT_LENGTH:
                raise SecurityError(f"repeating a {type(sequence).__name__} {count} times is too large "
                                    f"(over {MAX_BUILT_LENGTH} items)")
    return operator_module.mul(left, right) if operator == "*" else operator_module.pow(left, right)


def _bounded_width(width: int) -> int:
    if isinstance(width, int) and width > MAX_BUILT_LENGTH:
        raise SecurityError(f"a width of {width} is too large (over {MAX_BUILT_LENGTH})")
    return width


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    """Immutable sandbox where mapping keys beat methods of the same name, and the operators,
    methods and filters that build large values from short templates are bounded.

    Workflow data is JSON: ``fetch.items`` must read the key ``"items"``, not ``dict.items``.
    """

    # Intercepted operators are also never folded into constants at compile time.
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self) -> None:
        super().__init__(
            undefined=_ExplainingUndefined,
            autoescape=False,
            keep_trailing_newline=True,  # "line\n" in a config must stay "line\n"
            finalize=_finalize_output,
        )
        center = self.filters["center"]
        self.filters["center"] = lambda value, width=80: center(value, _bounded_width(width))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return _bounded_binop(operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's names)
        if getattr(__obj, "__name__", None) in _WIDTH_METHODS and isinstance(getattr(__obj, "__self__", None), str):
            for width in args[:1]:
                _bounded_width(width)
        return super().call(__context, __obj, *args, **kwargs)

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
