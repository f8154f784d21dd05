"""Errors of templates: one that does not parse, one that fails when it runs.

Both carry the dotted path of the string (``field``) apart from the message, so callers
can word it themselves, and survive pickling (they cross process boundaries as Prefect
results).
"""

from __future__ import annotations

from typing import Any


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
