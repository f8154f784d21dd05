"""Problems found while compiling a canvas, and the errors that carry them.

Every stage of the compiler returns issues instead of raising, so a user sees every
problem of a canvas at once. Each issue says what is wrong, where (node, edge, field) and
which other nodes are involved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Issue:
    code: str
    """Stable machine-readable code, e.g. ``unknown_node_type`` or ``cycle``."""
    message: str
    """A sentence a person understands, naming the culprits."""
    node_id: str | None = None
    edge_id: str | None = None
    field: str | None = None
    """Dotted path inside the node/edge/document, e.g. ``data.conditions[0].expression``."""
    severity: Severity = "error"
    related: tuple[str, ...] = ()
    """Other node ids involved: the nodes of a cycle, the target of a bad reference."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["related"] = list(self.related)
        return data

    def __str__(self) -> str:
        where = ", ".join(
            part
            for part in (
                f"node {self.node_id!r}" if self.node_id else "",
                f"edge {self.edge_id!r}" if self.edge_id else "",
                f"field {self.field}" if self.field else "",
            )
            if part
        )
        return f"{self.severity} [{self.code}] {where + ': ' if where else ''}{self.message}"


def errors_of(issues: tuple[Issue, ...] | list[Issue]) -> list[Issue]:
    return [issue for issue in issues if issue.severity == "error"]


class CanvasInvalid(ValueError):
    """A canvas did not compile; ``issues`` holds every problem found."""

    def __init__(self, issues: list[Issue] | tuple[Issue, ...]):
        self.issues = tuple(issues)
        errors = errors_of(self.issues)
        first = str(errors[0]) if errors else "no errors"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"invalid canvas: {first}{more}")


class InputsInvalid(ValueError):
    """Run inputs do not match the canvas's declared ``inputs``."""

    def __init__(self, issues: list[Issue]):
        self.issues = tuple(issues)
        super().__init__("invalid inputs: " + "; ".join(issue.message for issue in issues))
