"""Domain errors of the stores and services; ``api/errors.py`` maps them to HTTP."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Something the caller can fix or retry; ``issues`` says where, when it can."""

    def __init__(self, message: str, issues: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.issues = issues or []


class NotFound(DomainError):
    """No such thing for this owner (another owner's things are not found either)."""


class Conflict(DomainError):
    """The request contradicts the current state (a name taken, a run already ended)."""


class Invalid(DomainError):
    """The request's content is wrong: a canvas that does not compile, inputs that do not fit."""


class Unavailable(DomainError):
    """A service this needs is down or too slow; retry after ``retry_after_s``."""

    def __init__(self, service: str, message: str, retry_after_s: int = 5, details: dict | None = None):
        super().__init__(message)
        self.service = service
        self.retry_after_s = retry_after_s
        self.details = details or {}
        """More for the client, e.g. the ``idempotency_key`` to send again with a retry."""
