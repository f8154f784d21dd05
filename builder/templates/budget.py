"""The CPU and size budget of one render: what bounds a template the sandbox alone does not.

Templates run in the worker's event loop, next to every other run of the worker, and in
the API while it compiles. A Python thread cannot be interrupted, so a deadline would not
stop a template that loops for minutes; a counter checked *inside* the render does. Every
loop iteration, call, filter and intercepted operator is a step; building text costs a
step per ``CHARS_PER_STEP`` characters, and reading a large value (a filter's input, the
right side of ``in`` or ``==``, a string a method scans) costs steps by its size. A render
that runs out of steps, or builds one string or list longer than ``max_chars``, stops with
:class:`TemplateBudgetError` naming the limit, before it allocates the value.

One :class:`RenderBudget` covers one ``render_value`` call (all the strings of a node's
configuration, or one condition), so a configuration of many strings shares it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

from jinja2 import Undefined
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext

from builder.templates.determinism import text_of

CHARS_PER_STEP = 16
"""Building this many characters (or list items) costs one step: copying memory is cheap
next to a step of the template, but a template that builds tens of megabytes in small
pieces must still run out of budget."""

LOOP_ITEM_STEPS = 4
"""Reading an item of a loop (``loop|list``) costs as much as 4 plain steps (measured)."""


@dataclass(frozen=True)
class TemplateLimits:
    """How much work one render may do (``FLOWMAESTRO_TEMPLATE_MAX_STEPS``,
    ``FLOWMAESTRO_TEMPLATE_MAX_CHARS``)."""

    max_steps: int = 1_000_000
    """Loop iterations, calls, filters and operators (plus a step per 16 characters built,
    and what reading a large value costs, by its size: ``bounds.charged_input``):
    about 0.2-1 s of CPU when spent entirely."""
    max_chars: int = 1_000_000
    """The longest string or list a template may build, and the longest text it may render."""


DEFAULT_LIMITS = TemplateLimits()


class TemplateBudgetError(SecurityError):
    """A render exceeded its budget (steps or size); the message names the limit."""


def size_of(value: Any) -> int:
    """The length of a string, list, tuple or mapping; 0 for anything else (numbers, ...)."""
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value)
    return 0


def size_hint(value: Any) -> int:
    """What reading ``value`` once costs: the length of anything sized (strings, lists,
    mappings, ranges, views); 0 for numbers, undefined values and the rest."""
    if isinstance(value, (str, list, tuple, dict, range)):
        return len(value)
    if isinstance(value, Sized) and not isinstance(value, Undefined):
        try:
            return len(value)
        except Exception:  # a __len__ that fails: nothing to charge, the operation will say why
            return 0
    return 0


class RenderBudget:
    """The steps and characters one render has left (a counter, mutated by the sandbox)."""

    __slots__ = ("limits", "steps")

    def __init__(self, limits: TemplateLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.steps = 0

    def step(self, count: int = 1) -> bool:
        """Spend ``count`` steps; True (so generated code can use it inside a test)."""
        self.steps += count
        if self.steps > self.limits.max_steps:
            raise TemplateBudgetError(
                f"the template ran out of its budget of {self.limits.max_steps:,} steps "
                "(FLOWMAESTRO_TEMPLATE_MAX_STEPS): a loop or recursion runs too long"
            )
        return True

    def scan(self, value: Any, per_step: int = CHARS_PER_STEP) -> None:
        """Spend what reading ``value`` once costs: a step per ``per_step`` items or characters
        (Python's scans of a list or string run far faster than a step of the template)."""
        self.step(1 + size_hint(value) // per_step)

    def counted(self, items: Iterable[Any]) -> Iterator[Any]:
        """``items`` (an iterator of unknown length: a generator of a filter, a loop),
        spending a step per item as it is read."""
        # A loop advanced by hand (``loop|list``) runs Jinja's Python bookkeeping per item.
        per_item = LOOP_ITEM_STEPS if isinstance(items, LoopContext) else 1
        for item in items:
            self.step(per_item)
            yield item

    def container(self, value: Any) -> Any:
        """The right side of ``in`` / ``not in``, charged for the scan it will take: a list,
        string or range is scanned, a mapping is a hash lookup, an iterator is read item by item."""
        if isinstance(value, (str, list, tuple)):
            self.step(1 + len(value) // CHARS_PER_STEP)
            return value
        if isinstance(value, Mapping):
            self.step()
            return value
        if isinstance(value, Iterator):
            return self.counted(value)
        self.scan(value)
        return value

    def compared(self, value: Any) -> Any:
        """An operand of ``==``, ``<``, ...: comparing two lists, strings or mappings reads them."""
        if isinstance(value, (int, float)):
            self.step()
        else:
            self.scan(value)
        return value

    def sliced(self, value: Any, start: Any, stop: Any, stride: Any) -> Any:
        """``value[start:stop:stride]``: charged for the copy it makes."""
        result = value[start:stop:stride]
        self.scan(result)
        return result

    def will_build(self, size: int, what: str = "a value") -> None:
        """Refuse, before it is allocated, a string or list of ``size`` characters or items."""
        if size > self.limits.max_chars:
            raise TemplateBudgetError(
                f"{what} of {size:,} characters or items is too large (over the template "
                f"limit of {self.limits.max_chars:,}, FLOWMAESTRO_TEMPLATE_MAX_CHARS)"
            )
        self.step(1 + size // CHARS_PER_STEP)

    def grew(self, result: Any, source: Any, what: str) -> Any:
        """``result`` of an operation on ``source``: checked when it is larger than its source
        (data passed through unchanged, or made smaller, costs nothing)."""
        size = size_of(result)
        if size > size_of(source):
            self.will_build(size, what)
        return result

    def joined(self, parts: Iterable[str], what: str = "the rendered text") -> str:
        """``"".join(parts)``, counting as it goes and stopping at the limit."""
        pieces = []
        total = 0
        for part in parts:
            total += len(part)
            if total > self.limits.max_chars:
                self.will_build(total, what)
            self.step(1 + len(part) // CHARS_PER_STEP)
            pieces.append(part)
        return "".join(pieces)

    def concat(self, items: tuple[Any, ...]) -> str:
        """The ``~`` operator: each item as text, joined, refused before joining when too long."""
        parts = [item if isinstance(item, str) else text_of(item) for item in items]
        self.will_build(sum(map(len, parts)), "a '~' concatenation")
        return "".join(parts)

    def buffer(self) -> BoundedBuffer:
        return BoundedBuffer(self)


class BoundedBuffer(list):  # type: ignore[type-arg]
    """Where Jinja collects the output of a macro, a ``{% set %}`` block, a filter block or
    a loop with an else: counted like the top-level output, so a loop writing into one
    cannot build gigabytes before anything looks at its size."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: RenderBudget) -> None:
        super().__init__()
        self.budget = budget
        self.size = 0

    def append(self, item: Any) -> None:
        self._count(item)
        super().append(item)

    def extend(self, items: Iterable[Any]) -> None:
        items = tuple(items)
        for item in items:
            self._count(item)
        super().extend(items)

    def _count(self, item: Any) -> None:
        length = len(item) if isinstance(item, Sized) else 1
        self.size += length
        if self.size > self.budget.limits.max_chars:
            self.budget.will_build(self.size, "the text of a block or macro")
        self.budget.step(1 + length // CHARS_PER_STEP)
