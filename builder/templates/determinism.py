"""Templates are a pure function of the run: what the sandbox refuses because it is not.

A node's resolved configuration decides its key, and its key whether it already ran after a
crash or retry (the run's journal, Prefect's cache). So every value a template gives must be
the same on every execution of the run, given the same first start time, inputs, upstream
outputs and run id. Two kinds of values are not:

* names that draw random values (``lipsum``, the ``random`` filter) or ask for an object's
  identity (the ``sameas`` test): refused when the canvas is compiled (``REFUSED_GLOBALS``,
  ``REFUSED_FILTERS``, ``REFUSED_TESTS``; issue ``nondeterministic_template``);
* Python objects whose text holds their memory address (a method, a function, a generator,
  ``cycler(...)``: ``<built-in method upper of str object at 0x7f...>``), written into a
  string: refused when the template renders (:func:`check_printable`), since which of them a
  template prints depends on the data. A generator written by ``{{ ... }}`` is written as the
  JSON list of its items instead, as a single expression already gives it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

from builder.templates.errors import TemplateRenderError

NONDETERMINISTIC_CODE = "nondeterministic_template"
"""The compile issue of a template that uses a refused name."""

REFUSED_FILTERS = {"random": "it picks another item on every run"}
"""Filters that make a node's configuration differ each time it runs: a node whose
configuration changes gets a new key, so it would run again after a crash or retry."""
REFUSED_GLOBALS = {"lipsum": "it writes random text on every run"}
"""Jinja globals refused for the same reason (removed from the sandbox too)."""
REFUSED_TESTS = {
    "sameas": "whether two values are the same Python object depends on whether they were computed in "
    "this execution or restored from the run's journal"
}
"""Jinja tests refused for the same reason: ``is none``, ``is true``, ``is false`` and ``==``
say what ``sameas`` was used for."""

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_PLAIN = (str, int, float, type(None))


def check_printable(value: Any) -> None:
    """Raise :class:`TemplateRenderError` when the text of ``value`` would hold a memory address.

    Containers are walked (a string inside a list is data, never checked); any other object
    is judged by its ``repr``, which is what Python writes for it.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _PLAIN):
            continue
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif _ADDRESS.search(repr(item)):
            raise TemplateRenderError(
                f"{_kind(item)} cannot be written as text: its text holds its memory address, which changes on every "
                "run, so the node would get a new configuration each time it runs and run again after a crash or "
                "retry; call it, or add '| list' to a generator"
            )


def text_of(value: Any) -> str:
    """``str(value)``, refused when that text would hold a memory address."""
    if isinstance(value, str):
        return value
    check_printable(value)
    return str(value)


def _kind(value: Any) -> str:
    if inspect.isroutine(value):
        return f"the function or method {getattr(value, '__name__', '?')!r}"
    return f"a {type(value).__name__} object"
