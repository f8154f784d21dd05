"""Stage 7: template references.

Every string in a node's ``data``, in edge conditions and in the document's ``output``
is parsed; what it reads must exist when it runs. A node may read the outputs of nodes
upstream of it in its own scope or upstream of any enclosing container, never of its
own container nor of nodes inside another container (use that container's output).

A container's own-scope keys (a loop's ``condition``) are evaluated by the container
itself, between iterations, outside its body: they may use ``loop.*`` but not the
outputs of the body's nodes (``loop.results`` holds what the iterations gave).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from types import MappingProxyType
from typing import Any

from builder.draft import Draft
from builder.graph import Ancestry, container_path
from builder.issues import Issue
from builder.limits import NO_DEADLINE, CompileLimits, Deadline
from builder.plan import TOP
from builder.templates import NAMESPACES, TemplateRefs, TemplateShapeLimits, find_references


def check_references(draft: Draft, limits: CompileLimits = CompileLimits(), deadline: Deadline = NO_DEADLINE) -> Draft:
    predecessors: dict[str, list[str]] = defaultdict(list)
    for edge_id in draft.handles:
        edge = draft.edges[edge_id]
        predecessors[edge.target].append(edge.source)
    checker = _Checker(draft, predecessors)
    issues: list[Issue] = []
    references: dict[str, frozenset[str]] = {}
    excluded, specs = draft.excluded, draft.specs
    template_limits = TemplateShapeLimits(limits.max_template_chars, limits.max_template_nesting)
    find = functools.partial(find_references, limits=template_limits)
    for count, (node_id, node) in enumerate(draft.nodes.items()):
        if count % 256 == 0:
            deadline.check("template references")
        if node_id in excluded or node_id not in specs:
            continue
        spec = specs[node_id]
        own_keys = spec.own_scope_keys
        data = {k: v for k, v in node.data.items() if k not in spec.literal_keys}
        found: set[str] = set()  # targets checked and fine (strings of a node often share them)
        if own_keys and not own_keys.isdisjoint(data):
            outer_data = {k: v for k, v in data.items() if k not in own_keys}
            inner_data = {k: v for k, v in data.items() if k in own_keys}
            inner_found: set[str] = set()
            for refs in find(inner_data, expression_keys=spec.expression_keys | own_keys):
                checker.check(refs, reader=node_id, inside=node_id, issues=issues, found=inner_found)
            found |= inner_found
            outer_found: set[str] = set()
            for refs in find(outer_data, expression_keys=spec.expression_keys):
                checker.check(refs, reader=node_id, inside=None, issues=issues, found=outer_found)
            found |= outer_found
        else:
            for refs in find(data, expression_keys=spec.expression_keys):
                checker.check(refs, reader=node_id, inside=None, issues=issues, found=found)
        for name in ("concurrency", "rate_limit"):  # their keys are templates too
            limit = getattr(node, name)
            if limit is not None:
                for refs in find(limit.key, field=f"{name}.key"):
                    checker.check(refs, reader=node_id, inside=None, issues=issues, found=found)
        references[node_id] = frozenset(found)

    for edge_id in draft.handles:
        edge = draft.edges[edge_id]
        condition = edge.data.condition if edge.data else None
        if condition is None or edge.source in excluded:
            continue
        value = {"field": condition.field, "value": condition.value}
        for refs in find(value, field="data.condition"):
            found = checker.check(
                refs, reader=edge.source, inside=None, issues=issues, edge_id=edge_id, reader_included=True
            )
            # The engine evaluates edge conditions with the source's references in scope.
            references[edge.source] = references.get(edge.source, frozenset()) | found

    if draft.header is not None and draft.header.output is not None:
        for refs in find(draft.header.output, field="output"):
            checker.check_output(refs, issues)
    return draft.add(*issues, references=MappingProxyType(references))


def _where(reader: str, edge_id: str | None, field: str) -> dict[str, Any]:
    """Where an issue is: the reading node, or the edge whose condition reads."""
    return {"node_id": None if edge_id else reader, "edge_id": edge_id, "field": field}


class _Checker:
    def __init__(self, draft: Draft, predecessors: dict[str, list[str]]):
        self.draft = draft
        self.predecessors = predecessors
        self.scope_of = draft.scope_of
        self.components = getattr(draft, "components", None) or {}
        self._chains: dict[str, tuple[str, ...]] = {}
        self._kind_cache: dict[str, tuple[str | None, ...]] = {}
        self._ancestry: dict[str, Ancestry] = {}  # per scope, built when a reference needs it
        self._members: dict[str, list[str]] | None = None  # the nodes that run, per scope

    def _is_upstream(self, target: str, node: str, scope: str) -> bool:
        """Whether a path leads from ``target`` to ``node``, both in ``scope``."""
        if target in self.predecessors.get(node, ()):
            return True  # the usual case: a template reads the node just before
        ancestry = self._ancestry.get(scope)
        if ancestry is None:
            if self._members is None:
                self._members = defaultdict(list)
                for node_id, node_scope in self.scope_of.items():
                    if node_id not in self.draft.excluded:
                        self._members[node_scope].append(node_id)
            ancestry = self._ancestry[scope] = Ancestry(
                self._members[scope], self.predecessors, self.draft.levels, self.components
            )
        return ancestry.is_upstream(target, node)

    def _containers(self, node_id: str) -> tuple[str, ...]:
        """Enclosing containers of a node, innermost first (computed once per scope)."""
        scope = self.scope_of.get(node_id, TOP)
        chain = self._chains.get(scope)
        if chain is None:
            chain = self._chains[scope] = container_path(self.scope_of, node_id)
        return chain

    def _kinds(self, node_id: str) -> tuple[str | None, ...]:
        """``loop`` or ``parallel`` for each container around a node, innermost first."""
        scope = self.scope_of.get(node_id, TOP)
        kinds = self._kind_cache.get(scope)
        if kinds is None:
            specs = self.draft.specs
            kinds = self._kind_cache[scope] = tuple(
                specs[c].container if c in specs else None for c in self._containers(node_id)
            )
        return kinds

    def check(
        self,
        refs: TemplateRefs,
        *,
        reader: str,
        inside: str | None,
        issues: list[Issue],
        edge_id: str | None = None,
        reader_included: bool = False,
        found: set[str] | None = None,
    ) -> set[str]:
        """Check one template string read by node ``reader``; ``inside`` is set when the
        string is evaluated by that container between its own iterations. Returns the
        nodes it may read, added to ``found`` when given: targets already there (checked
        fine for the same reader, same way) are not checked again."""
        if found is None:
            found = set()
        if refs.error is not None:
            issues.append(
                Issue(refs.error_code, f"{refs.field}: {refs.error.message}", **_where(reader, edge_id, refs.field))
            )
            return found
        containers = self._containers(reader)
        names = refs.names
        if "loop" in names or "parallel" in names:
            kinds = self._kinds(reader)
            if inside is not None:  # the container's own keys see its own namespace too
                spec = self.draft.specs.get(inside)
                kinds = (spec.container if spec else None, *kinds)
            for namespace in ("loop", "parallel"):
                if namespace in names and namespace not in kinds:
                    issues.append(
                        Issue(
                            f"{namespace}_outside_container",
                            f"{refs.field} uses {namespace}.* but the node is not inside a {namespace} container",
                            **_where(reader, edge_id, refs.field),
                        )
                    )
        targets = names - NAMESPACES  # (names Jinja provides are never in refs.names)
        if refs.node_keys:
            targets = targets | refs.node_keys
        if found:
            targets = targets - found
        for target in sorted(targets) if len(targets) > 1 else targets:
            if self._check_target(target, reader, inside, containers, refs.field, issues, edge_id, reader_included):
                found.add(target)
        return found

    def _check_target(
        self,
        target: str,
        reader: str,
        inside: str | None,
        containers: tuple[str, ...],
        field: str,
        issues: list[Issue],
        edge_id: str | None,
        reader_included: bool,
    ) -> bool:
        draft = self.draft
        if target not in draft.nodes:
            issues.append(
                Issue(
                    "unknown_reference",
                    f"{field} of {reader!r} reads {target!r}, which is not a node nor a template namespace",
                    related=(target,),
                    **_where(reader, edge_id, field),
                )
            )
            return False
        if target in draft.excluded:
            issues.append(
                Issue(
                    "reference_unreachable",
                    f"{field} of {reader!r} reads {target!r}, which is not reachable from start and never runs",
                    related=(target,),
                    **_where(reader, edge_id, field),
                )
            )
            return False
        if reader_included and target == reader:
            return True
        target_scope = self.scope_of[target]
        if inside is not None and (target_scope == inside or inside in self._containers(target)):
            # The container evaluates this between iterations, outside its body.
            kind = draft.specs[inside].container if inside in draft.specs else "container"
            issues.append(
                Issue(
                    "reference_into_container",
                    f"{field} of {reader!r} reads {target!r}, which is "
                    f"inside {reader!r} itself; the {kind} evaluates it outside its body, where the "
                    f"body's outputs do not exist: read what past iterations gave with loop.results "
                    f"(loop.results[-1] is the last one)",
                    related=(target,),
                    **_where(reader, edge_id, field),
                )
            )
            return False
        if target_scope != TOP and target_scope not in containers:
            issues.append(
                Issue(
                    "reference_into_container",
                    f"{field} of {reader!r} reads {target!r}, which is "
                    f"inside container {target_scope!r}; read {target_scope!r}'s output instead",
                    related=(target,),
                    **_where(reader, edge_id, field),
                )
            )
            return False
        if target == reader:
            issues.append(
                Issue(
                    "reference_not_upstream",
                    f"{field} of {reader!r} reads its own output, which does not exist before the node has run",
                    related=(target,),
                    **_where(reader, edge_id, field),
                )
            )
            return False
        if target in containers:
            issues.append(
                Issue(
                    "reference_not_upstream",
                    f"{field} of {reader!r} reads {target!r}, which "
                    f"contains it; its output exists only after the container ends",
                    related=(target,),
                    **_where(reader, edge_id, field),
                )
            )
            return False
        # Lift the reader to the target's scope: the reader itself, or its enclosing
        # container that sits in that scope (target_scope is TOP or one of containers).
        lifted = reader
        if self.scope_of.get(reader, TOP) != target_scope:
            lifted = next(c for c in containers if self.scope_of.get(c, TOP) == target_scope)
        if not self._is_upstream(target, lifted, target_scope):
            issues.append(
                Issue(
                    "reference_not_upstream",
                    f"{field} of {reader!r} reads {target!r}, which is not "
                    f"upstream of it (no path of edges leads from {target!r} to {lifted!r})",
                    related=(target,),
                    **_where(reader, edge_id, field),
                )
            )
            return False
        return True

    def check_output(self, refs: TemplateRefs, issues: list[Issue]) -> None:
        if refs.error is not None:
            issues.append(Issue(refs.error_code, f"{refs.field}: {refs.error.message}", field=refs.field))
            return
        for namespace in ("loop", "parallel"):
            if namespace in refs.names:
                issues.append(
                    Issue(
                        f"{namespace}_outside_container",
                        f"{refs.field} uses {namespace}.* outside a container",
                        field=refs.field,
                    )
                )
        targets = (refs.names - NAMESPACES) | refs.node_keys
        for target in sorted(targets):
            if target not in self.draft.nodes:
                issues.append(
                    Issue(
                        "output_unknown_reference",
                        f"the workflow output reads {target!r}, which is not a node",
                        field=refs.field,
                        related=(target,),
                    )
                )
            elif self.scope_of[target] != TOP:
                issues.append(
                    Issue(
                        "reference_into_container",
                        f"the workflow output reads {target!r}, which is inside container {self.scope_of[target]!r}",
                        field=refs.field,
                        related=(target,),
                    )
                )
            elif target in self.draft.excluded:
                issues.append(
                    Issue(
                        "reference_unreachable",
                        f"the workflow output reads {target!r}, which never runs (not reachable from start)",
                        field=refs.field,
                        related=(target,),
                    )
                )
