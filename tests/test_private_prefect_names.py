"""Prefect beyond its public API only in ``flows/prefect_compat.py``: every other module of
FlowMaestro's packages is scanned (its AST) for

(a) imports from a private Prefect module (a path segment starting with ``_``, e.g.
    ``prefect._internal``) or of a private name (``from prefect.x import _name``);
(b) private Prefect attributes: ``x._name`` read, assigned or overridden, where ``_name``
    is defined somewhere in the installed ``prefect`` package (module level, class body,
    ``self._name = ...``). A ``_name`` FlowMaestro's own code defines too is ours, unless
    it is defined in a class derived from a Prefect class (overriding a private hook, or
    writing private state, is using it);
(c) fields of Prefect's objects that no public API documents for clients (``INTERNAL_FIELDS``).

A new use belongs behind a named function of ``prefect_compat``, with a contract test in
``tests/test_prefect_compat.py``.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import prefect

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("builder", "store", "node_handlers", "flows", "deployments", "api", "cli")
THE_DOOR = ROOT / "flows" / "prefect_compat.py"

INTERNAL_FIELDS = frozenset({"empirical_policy"})
"""Flow and task runs' orchestration bookkeeping (``empirical_policy.pause_keys``, retries...):
in the client's models, but documented nowhere as something a client reads."""


NOT_PREFECTS = {
    "_rrule": "dateutil's rruleset._rrule (deployments/schedules.py), a name Prefect happens to use too",
}
"""Private names of other libraries that Prefect defines as well, each with where it is used."""


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_names(tree: ast.AST) -> Iterator[tuple[str, ast.ClassDef | None]]:
    """Each ``_name`` a module defines, with the class whose body or methods define it."""

    def walk(node: ast.AST, owner: ast.ClassDef | None) -> Iterator[tuple[str, ast.ClassDef | None]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield child.name, owner
                yield from walk(child, child)
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield child.name, owner
            elif isinstance(child, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            yield leaf.id, owner
                        elif (
                            isinstance(leaf, ast.Attribute)
                            and isinstance(leaf.value, ast.Name)
                            and leaf.value.id in ("self", "cls")
                        ):
                            yield leaf.attr, owner
            yield from walk(child, owner)

    return ((name, owner) for name, owner in walk(tree, None) if is_private(name))


PRIVATE_WORD = re.compile(r"\b_\w+")


@functools.cache
def prefect_private_names(among: frozenset[str]) -> frozenset[str]:
    """The names of ``among`` that Prefect's package defines as private names. Only the files
    that mention one of them are parsed (a tenth of Prefect's 860 files for our packages):
    a file that defines a name mentions it."""
    names: set[str] = set()
    for path in Path(prefect.__file__).parent.rglob("*.py"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if not among & set(PRIVATE_WORD.findall(text)):
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        names.update(name for name, _owner in _defined_names(tree) if name in among)
    return frozenset(names)


@dataclass(frozen=True)
class Use:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _prefect_classes(nodes: list[ast.AST]) -> set[str]:
    """Names of classes that derive from a Prefect class: imported from ``prefect``, or one
    of ours deriving from one (``prefect_compat.PollingWorker`` and its subclasses)."""
    imported_from_prefect: set[str] = set()
    classes: list[ast.ClassDef] = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect":
            imported_from_prefect.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.ClassDef):
            classes.append(node)
    derived: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in classes:
            if node.name not in derived and _base_names(node) & (imported_from_prefect | derived):
                derived.add(node.name)
                changed = True
    return derived


def _base_names(node: ast.ClassDef) -> set[str]:
    return {
        b.id
        if isinstance(b, ast.Name)
        else b.attr
        if isinstance(b, ast.Attribute)
        else b.value.id
        if isinstance(b, ast.Subscript) and isinstance(b.value, ast.Name)
        else b.value.attr
        if isinstance(b, ast.Subscript) and isinstance(b.value, ast.Attribute)
        else ""
        for b in node.bases
    }


def private_prefect_uses(trees: dict[str, ast.Module], door: str | None = None) -> list[Use]:
    """The uses in ``trees`` (path -> module) of Prefect's private names, outside ``door``."""
    nodes = {path: list(ast.walk(tree)) for path, tree in trees.items()}
    every_node = [node for walked in nodes.values() for node in walked]
    from_prefect = _prefect_classes(every_node)
    defined = [pair for tree in trees.values() for pair in _defined_names(tree)]
    ours = {name for name, owner in defined if owner is None or owner.name not in from_prefect}
    # Prefect is asked only about the private names these modules use or define.
    words = {node.attr for node in every_node if isinstance(node, ast.Attribute) and is_private(node.attr)}
    prefect_names = prefect_private_names(frozenset(words | {name for name, _owner in defined}))
    uses: list[Use] = []
    for path in trees:
        if path == door:
            continue
        for node in nodes[path]:
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect":
                if any(is_private(part) for part in node.module.split(".")):
                    uses.append(Use(path, node.lineno, f"import from private module {node.module}"))
                for alias in node.names:
                    if is_private(alias.name):
                        uses.append(Use(path, node.lineno, f"import of private {node.module}.{alias.name}"))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "prefect" and any(is_private(part) for part in parts):
                        uses.append(Use(path, node.lineno, f"import of private module {alias.name}"))
            elif isinstance(node, ast.Attribute):
                if node.attr in INTERNAL_FIELDS:
                    uses.append(Use(path, node.lineno, f"Prefect's internal field .{node.attr}"))
                elif (
                    is_private(node.attr)
                    and node.attr in prefect_names
                    and node.attr not in ours
                    and node.attr not in NOT_PREFECTS
                ):
                    uses.append(Use(path, node.lineno, f"Prefect's private attribute .{node.attr}"))
            elif isinstance(node, ast.ClassDef) and node.name in from_prefect:
                for name, owner in _defined_names(node):  # owner None: the class itself, its methods
                    if owner is None and name in prefect_names and name not in NOT_PREFECTS:
                        uses.append(Use(path, node.lineno, f"class {node.name} defines Prefect's private {name}"))
    return sorted(set(uses), key=lambda u: (u.path, u.line, u.what))


def our_modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(ROOT)): ast.parse(path.read_text(encoding="utf-8"), str(path))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def test_no_private_prefect_name_outside_prefect_compat():
    modules = our_modules()
    assert str(THE_DOOR.relative_to(ROOT)) in modules
    uses = private_prefect_uses(modules, door=str(THE_DOOR.relative_to(ROOT)))
    assert not uses, "Prefect beyond its public API outside flows/prefect_compat.py:\n" + "\n".join(map(str, uses))


def test_the_scan_finds_each_kind_of_use():
    """The check itself: each kind of use is found, our own private names are not."""
    source = """
from prefect._internal.compatibility.blocks import call_explicitly_async_block_method
from prefect.flows import _raise_on_name_with_banned_characters
import prefect._internal.concurrency
from prefect.workers.base import BaseWorker


class Mine:
    def __init__(self):
        self._pending = []


class Worker(BaseWorker):
    async def _get_scheduled_flow_runs(self):
        return await super()._get_scheduled_flow_runs()

    def pool(self):
        return self._work_pool, self._pending


def keys(flow_run):
    return flow_run.empirical_policy.pause_keys
"""
    uses = private_prefect_uses({"sample.py": ast.parse(source)})
    found = {(u.line, u.what) for u in uses}
    assert (2, "import from private module prefect._internal.compatibility.blocks") in found
    assert (3, "import of private prefect.flows._raise_on_name_with_banned_characters") in found
    assert (4, "import of private module prefect._internal.concurrency") in found
    assert (13, "class Worker defines Prefect's private _get_scheduled_flow_runs") in found
    assert (15, "Prefect's private attribute ._get_scheduled_flow_runs") in found
    assert (18, "Prefect's private attribute ._work_pool") in found
    assert (22, "Prefect's internal field .empirical_policy") in found
    assert not [u for u in uses if "_pending" in u.what], uses  # ours, in a class of ours
    # The same module as the door: nothing.
    assert private_prefect_uses({"sample.py": ast.parse(source)}, door="sample.py") == []
