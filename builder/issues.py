"""Problems found while compiling a canvas, and the errors that carry them.

Every stage of the compiler returns issues instead of raising, so a user sees every
problem of a canvas at once. Each issue says what is wrong, where (node, edge, field) and
which other nodes are involved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pydantic import ValidationError

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


class InputsInvalid(ValueError):
    """Run inputs do not match the canvas's declared ``inputs``."""

    def __init__(self, issues: list[Issue]):
        self.issues = tuple(issues)
        super().__init__("invalid inputs: " + "; ".join(issue.message for issue in issues))


# --------------------------------------------------------------------------- pydantic errors in words


def field_path(loc: Sequence[Any], prefix: str = "") -> str:
    """``("conditions", 0, "expression")`` as ``data.conditions[0].expression`` (with prefix ``data``)."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# How pydantic names the alternatives of a union in an error's location: "int", "str",
# "list[any]", "function-after[_must_be_template(), str]", "literal['a','b']", ...
_UNION_TAG = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*\[.*\]|int|float|str|bool|bytes|none|decimal", re.DOTALL)
_TEMPLATE_TAG = "_must_be_template"  # the TemplateStr alternative (builder.catalog)


def readable_errors(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """``(path, message)`` for each problem of a pydantic ``ValidationError``, one per field.

    Pydantic reports a value that fits no alternative of a union once per alternative,
    under locations such as ``count.int`` and ``count.function-after[...]``. Here those
    location parts are dropped and the alternatives of one field merged into one message
    ("expected an array, or a template such as '{{ inputs.items }}'"). A template
    alternative refused only because the value is not text is left out when the other
    alternatives say more. Use it wherever such errors are shown to people.
    """
    from builder.catalog import expected_kind, template_hint  # catalog imports plan, not issues

    groups: dict[str, list[tuple[dict[str, Any], bool]]] = {}
    names: dict[str, str | None] = {}
    for err in error.errors(include_url=False):
        parts: list[Any] = []
        template_branch = False
        for part in err["loc"]:
            if isinstance(part, str) and _UNION_TAG.fullmatch(part):
                template_branch = template_branch or _TEMPLATE_TAG in part
                continue
            parts.append(part)
        where = field_path(parts, prefix)
        groups.setdefault(where, []).append((dict(err), template_branch))
        names[where] = next((p for p in reversed(parts) if isinstance(p, str)), None)
    out = []
    for where, items in groups.items():
        template = [err for err, is_template in items if is_template]
        others = [err for err, is_template in items if not is_template]
        if (
            template
            and all(err["type"] == "string_type" for err in template)
            and (others or any(path.startswith((where + ".", where + "[")) for path in groups if path != where))
        ):
            template = []  # not text at all: the other alternative's problems are the ones meant
        remaining = template + others
        if not remaining:
            continue
        if template and others:
            kinds = list(dict.fromkeys(expected_kind(err) for err in others))
            message = f"expected {' or '.join(kinds)}, or {template_hint(names[where])}"
        elif len(remaining) > 1:
            kinds = list(dict.fromkeys(expected_kind(err) for err in remaining))
            worded = all(expected_kind(err) != err["msg"] for err in remaining)
            message = f"expected {' or '.join(kinds)}" if worded else "; or ".join(kinds)
        else:
            # "Value error, " is how pydantic prefixes a validator's own ValueError: noise to a reader.
            message = str(remaining[0]["msg"]).removeprefix("Value error, ")
        out.append((where, message))
    return out
