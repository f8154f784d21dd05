"""The bundled templates (``api/workflow_templates/*.json``, package data) and what every
template needs before it can run: the inputs it declares, the stored credentials its nodes
name, the model providers it calls, the workflows it brings along.

A bundled template is a file: ``{id, name, description, category, tags, credentials:
{name: {type, description}}, canvas, children?: {key: canvas}, schedule?, webhook?}``. Its
canvas may run workflows of its own ``children`` by ``template:<key>``; instantiating it
saves the children first and points the references at them (``builder.workflow_refs``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from builder.workflow_refs import workflow_refs
from node_handlers.credentials import named_credentials
from store.errors import NotFound

BUNDLED_DIR = Path(__file__).resolve().parent / "workflow_templates"
CHILD_PREFIX = "template:"
MODEL_NODE_TYPES = frozenset({"llm", "router", "agent"})


@dataclass(frozen=True)
class Template:
    """A template, bundled or an owner's, as the routes answer it."""

    id: str
    name: str
    description: str
    category: str
    canvas: dict[str, Any]
    source: str  # "bundled" | "owner"
    tags: tuple[str, ...] = ()
    children: dict[str, dict[str, Any]] = field(default_factory=dict)
    credential_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    suggested: dict[str, Any] = field(default_factory=dict)
    """What the template suggests besides its canvas: ``schedule``, ``webhook``."""

    def needs(self) -> dict[str, Any]:
        return template_needs(self.canvas, self.children, self.credential_types)

    def matches(self, category: str | None, q: str | None) -> bool:
        if category and self.category != category:
            return False
        if q:
            text = " ".join((self.name, self.description, " ".join(self.tags))).lower()
            return q.lower() in text
        return True


def template_needs(
    canvas: dict[str, Any],
    children: dict[str, dict[str, Any]] | None = None,
    credential_types: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What a frontend asks for before instantiating or running: the declared ``inputs``
    (of the main canvas: the children get theirs from it), the ``credentials`` every node
    names (the children's included), the model ``providers`` and the ``workflows`` run."""
    documents = [canvas, *(children or {}).values()]
    credentials: dict[str, dict[str, Any]] = {}
    providers: set[str] = set()
    for document in documents:
        for node_id, name in named_credentials(document):
            entry = credentials.setdefault(
                name, {"name": name, **(credential_types or {}).get(name, {}), "used_by": []}
            )
            entry["used_by"].append(node_id)
        for node in document.get("nodes") or []:
            if isinstance(node, dict) and node.get("type") in MODEL_NODE_TYPES:
                data = node.get("data") if isinstance(node.get("data"), dict) else {}
                providers.add(str((data or {}).get("provider") or "openai"))
    return {
        "inputs": canvas.get("inputs") or {},
        "credentials": sorted(credentials.values(), key=lambda c: c["name"]),
        "providers": sorted(providers),
        "workflows": [ref for document in documents for ref in workflow_refs(document)],
    }


def _load(path: Path) -> Template:
    raw = json.loads(path.read_text())
    suggested = {key: raw[key] for key in ("schedule", "webhook") if raw.get(key) is not None}
    return Template(
        id=raw["id"],
        name=raw["name"],
        description=raw["description"],
        category=raw["category"],
        canvas=raw["canvas"],
        source="bundled",
        tags=tuple(raw.get("tags") or ()),
        children=raw.get("children") or {},
        credential_types=raw.get("credentials") or {},
        suggested=suggested,
    )


@cache
def bundled() -> tuple[Template, ...]:
    """The bundled library, read once per process (package data does not change)."""
    return tuple(_load(path) for path in sorted(BUNDLED_DIR.glob("*.json")))


def bundled_template(template_id: str) -> Template:
    for template in bundled():
        if template.id == template_id:
            return template
    raise NotFound(f"template {template_id} not found")
