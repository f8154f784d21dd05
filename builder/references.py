"""Stage 7: template references.

Every string in a node's ``data``, in edge conditions and in the document's ``output``
is parsed; what it reads must exist when it runs. A node may read the outputs of nodes
upstream of it in its own scope or upstream of any enclosing container, never of its
own container nor of nodes inside another container (use that container's output).
"""

from __future__ import annotations

from collections import defaultdict
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from builder.graph import is_upstream
from builder.issues import Issue
from builder.plan import TOP
from builder.templates import TemplateRefs, find_references

if TYPE_CHECKING:
    from builder.compiler import Draft

NAMESPACES = frozenset({"inputs", "var", "env", "run", "loop", "parallel", "nodes"})
JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace", "true", "false", "none",
                           "True", "False", "None"})


def check_references(draft: Draft) -> Draft:
    predecessors: dict[str, list[str]] = defaultdict(list)
    for edge_id in draft.handles:
        edge = draft.edges[edge_id]
        predecessors[edge.target].append(edge.source)
    checker = _Checker(draft, predecessors)
    issues: list[Issue] = []
    references: dict[str, frozenset[str]] = {}
    for node_id, node in draft.nodes.items():
        if node_id in draft.excluded or node_id not in draft.specs:
            continue
        spec = draft.specs[node_id]
        own_keys = spec.own_scope_keys
        outer_data = {k: v for k, v in node.data.items() if k not in own_keys}
        inner_data = {k: v for k, v in node.data.items() if k in own_keys}
        found: set[str] = set()
        for refs in find_references(outer_data, expression_keys=spec.expression_keys):
            found |= checker.check(refs, reader=node_id, inside=None, issues=issues)
        for refs in find_references(inner_data, expression_keys=spec.expression_keys | own_keys):
            found |= checker.check(refs, reader=node_id, inside=node_id, issues=issues)
        references[node_id] = frozenset(found)

    for edge_id in draft.handles:
        edge = draft.edges[edge_id]
        condition = edge.data.condition if edge.data else None
        if condition is None or edge.source in draft.excluded:
            continue
        value = {"field": condition.field, "value": condition.value}
        for refs in find_references(value, field="data.condition"):
            found = checker.check(refs, reader=edge.source, inside=None, issues=issues, edge_id=edge_id,
                                  reader_included=True)
            # The engine evaluates edge conditions with the source's references in scope.
            references[edge.source] = references.get(edge.source, frozenset()) | found

    if draft.header is not None and draft.header.output is not None:
        for refs in find_references(draft.header.output, field="output"):
            checker.check_output(refs, issues)
    return draft.add(*issues, references=MappingProxyType(references))


class _Checker:
    def __init__(self, draft: Draft, predecessors: dict[str, list[str]]):
        self.draft = draft
        self.predecessors = predecessors

    def _containers(self, node_id: str) -> list[str]:
        out = []
        current = self.draft.scope_of.get(node_id, TOP)
        while current != TOP:
            out.append(current)
            current = self.draft.scope_of.get(current, TOP)
        return out

    def check(self, refs: TemplateRefs, *, reader: str, inside: str | None, issues: list[Issue],
              edge_id: str | None = None, reader_included: bool = False) -> set[str]:
        """Check one template string read by node ``reader``; ``inside`` is set when the
        string is evaluated inside that container's own iterations."""
        where = {"node_id": None if edge_id else reader, "edge_id": edge_id, "field": refs.field}
        if refs.error is not None:
            issues.append(Issue("template_syntax", f"{refs.field}: {refs.error.message}", **where))
            return set()
        containers = self._containers(reader)
        if inside is not None:
            containers = [inside] + containers
        kinds = [self.draft.specs[c].container if c in self.draft.specs else None for c in containers]
        for namespace in ("loop", "parallel"):
            if namespace in refs.names and namespace not in kinds:
                issues.append(Issue(f"{namespace}_outside_container",
                                    f"{refs.field} uses {namespace}.* but the node is not inside a {namespace} "
                                    f"container", **where))
        targets = {n for n in refs.names if n not in NAMESPACES and n not in JINJA_GLOBALS} | set(refs.node_keys)
        found = set()
        for target in sorted(targets):
            if self._check_target(target, reader, containers, refs.field, issues, where, reader_included):
                found.add(target)
        return found

    def _check_target(self, target: str, reader: str, containers: list[str], field: str, issues: list[Issue],
                      where: dict[str, Any], reader_included: bool) -> bool:
        draft = self.draft
        if target not in draft.nodes:
            issues.append(Issue("unknown_reference", f"{field} of {reader!r} reads {target!r}, which is not a node "
                                f"nor a template namespace", related=(target,), **where))
            return False
        if target in draft.excluded:
            issues.append(Issue("reference_unreachable", f"{field} of {reader!r} reads {target!r}, which is not "
                                f"reachable from start and never runs", related=(target,), **where))
            return False
        if reader_included and target == reader:
            return True
        target_scope = draft.scope_of[target]
        if target_scope != TOP and target_scope not in containers:
            issues.append(Issue("reference_into_container", f"{field} of {reader!r} reads {target!r}, which is "
                                f"inside container {target_scope!r}; read {target_scope!r}'s output instead",
                                related=(target,), **where))
            return False
        # Lift the reader to the target's scope: the reader itself, or its enclosing
        # container that sits in that scope.
        chain = [reader] + self._containers(reader)
        lifted = next(c for c in chain if draft.scope_of.get(c, TOP) == target_scope)
        if lifted == target or target in containers:
            issues.append(Issue("reference_not_upstream", f"{field} of {reader!r} reads {target!r}, which "
                                f"contains it; its output exists only after the container ends",
                                related=(target,), **where))
            return False
        if not is_upstream(target, lifted, self.predecessors, draft.levels):
            issues.append(Issue("reference_not_upstream", f"{field} of {reader!r} reads {target!r}, which is not "
                                f"upstream of it (no path of edges leads from {target!r} to {lifted!r})",
                                related=(target,), **where))
            return False
        return True

    def check_output(self, refs: TemplateRefs, issues: list[Issue]) -> None:
        if refs.error is not None:
            issues.append(Issue("template_syntax", f"{refs.field}: {refs.error.message}", field=refs.field))
            return
        for namespace in ("loop", "parallel"):
            if namespace in refs.names:
                issues.append(Issue(f"{namespace}_outside_container", f"{refs.field} uses {namespace}.* outside "
                                    f"a container", field=refs.field))
        targets = {n for n in refs.names if n not in NAMESPACES and n not in JINJA_GLOBALS} | set(refs.node_keys)
        for target in sorted(targets):
            if target not in self.draft.nodes:
                issues.append(Issue("output_unknown_reference", f"the workflow output reads {target!r}, which is "
                                    f"not a node", field=refs.field, related=(target,)))
            elif self.draft.scope_of[target] != TOP:
                issues.append(Issue("reference_into_container", f"the workflow output reads {target!r}, which is "
                                    f"inside container {self.draft.scope_of[target]!r}", field=refs.field,
                                    related=(target,)))
            elif target in self.draft.excluded:
                issues.append(Issue("reference_unreachable", f"the workflow output reads {target!r}, which never "
                                    f"runs (not reachable from start)", field=refs.field, related=(target,)))
