"""What changed between two canvases, structurally: nodes and edges by id, inputs and
variables by name, the run settings and the document output by field path.

A frontend highlights the changes on its canvas with it ("what changed since the version
that worked?"), so keys that only say how a canvas is drawn (``position``, ``selected``,
``width``... ``builder.canvas.UI_NODE_KEYS`` / ``UI_EDGE_KEYS``) are not changes. Pure: no
I/O, no compile; it reads the documents as saved, which need not be valid.

A change is ``{path, from, to}``: ``path`` names the field (``data.prompt``,
``data.tools[1].url``), ``from``/``to`` its values, ``None`` where it is absent. Lists of
the same length are compared item by item; a list that grew or shrank is one change of
the whole list (a frontend shows it as replaced, and the change can be applied as it is).
"""

from __future__ import annotations

from typing import Any

from builder.canvas import UI_EDGE_KEYS, UI_NODE_KEYS

Change = dict[str, Any]

_DOCUMENT_KEYS = ("name", "description")


def diff_canvases(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``{nodes, edges, inputs, variables: {added, removed, changed: [{id, changes}]},
    settings, output, document: [{path, from, to}]}``: ``after`` compared with ``before``."""
    return {
        "nodes": _keyed(_nodes(before), _nodes(after)),
        "edges": _keyed(_edges(before), _edges(after)),
        "inputs": _keyed(_mapping(before.get("inputs")), _mapping(after.get("inputs"))),
        "variables": _keyed(_mapping(before.get("variables")), _mapping(after.get("variables"))),
        "settings": changes(before.get("settings") or {}, after.get("settings") or {}),  # absent: the defaults
        "output": changes(before.get("output"), after.get("output")),
        "document": [c for key in _DOCUMENT_KEYS for c in changes(before.get(key), after.get(key), key)],
    }


def is_empty(diff: dict[str, Any]) -> bool:
    """No change at all in a ``diff_canvases`` answer."""
    for value in diff.values():
        if isinstance(value, dict):
            if value["added"] or value["removed"] or value["changed"]:
                return False
        elif value:
            return False
    return True


def changes(before: Any, after: Any, path: str = "") -> list[Change]:
    """Every leaf that differs between two JSON values, by field path."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[Change] = []
        for key in sorted(before.keys() | after.keys(), key=str):
            found += changes(before.get(key), after.get(key), _join(path, str(key)))
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [c for i, (b, a) in enumerate(zip(before, after)) for c in changes(b, a, f"{path}[{i}]")]
    if before == after and type(before) is type(after):  # 1 and True are equal, not the same
        return []
    return [{"path": path, "from": before, "to": after}]


def apply_changes(value: Any, found: list[Change]) -> Any:
    """``value`` with ``found`` (``changes(value, other)``) applied: ``other`` again, for
    values without nulls (``None`` is read as absent). What a client replaying a diff does;
    the tests check the diff is complete with it."""
    root: dict[str, Any] = {"": _copy(value)}
    for change in found:
        parent, key = _locate(root, change["path"])
        if change["to"] is None:
            if isinstance(parent, dict):
                parent.pop(key, None)
        else:
            parent[key] = _copy(change["to"])
    return root.get("")


def _keyed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    changed = []
    for key in sorted(before.keys() & after.keys()):
        found = changes(before[key], after[key])
        if found:
            changed.append({"id": key, "changes": found})
    return {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": changed,
    }


def _nodes(canvas: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for node in canvas.get("nodes") or []:
        if isinstance(node, dict) and isinstance(node.get("id"), str):
            found[node["id"]] = {k: v for k, v in node.items() if k not in UI_NODE_KEYS and k != "id"}
    return found


def _edges(canvas: dict[str, Any]) -> dict[str, Any]:
    """Edges by id; one without an id by what it connects (as the compiler names it)."""
    found = {}
    for edge in canvas.get("edges") or []:
        if not isinstance(edge, dict):
            continue
        key = edge.get("id")
        if not isinstance(key, str):
            key = f"{edge.get('source')}->{edge.get('target')}:{edge.get('sourceHandle') or 'source'}"
        found[key] = {k: v for k, v in edge.items() if k not in UI_EDGE_KEYS and k != "id"}
    return found


def _mapping(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _locate(root: dict[str, Any], path: str) -> tuple[Any, Any]:
    """The container holding ``path`` under ``root[""]`` and the key in it; dicts missing on
    the way are made (a change adding a nested field)."""
    steps: list[Any] = ["", *_split(path)]
    parent: Any = root
    for step in steps[:-1]:
        child = parent[step] if isinstance(parent, list) else parent.get(step)
        if not isinstance(child, dict | list):
            child = {}
            parent[step] = child
        parent = child
    return parent, steps[-1]


def _split(path: str) -> list[Any]:
    """``a.b[2].c`` -> ``["a", "b", 2, "c"]``."""
    parts: list[Any] = []
    for piece in path.split(".") if path else []:
        name, _, rest = piece.partition("[")
        if name:
            parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            parts.append(int(index))
            rest = rest.removeprefix("[")
    return parts
