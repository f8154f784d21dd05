"""The canvas compiler: a pipeline of pure stages from a JSON document to a ``Plan``.

Each stage takes the immutable ``Draft`` built so far and returns a new one with more
facts and, possibly, more issues. No stage stops at the first problem: the result lists
every issue found, errors apart from warnings.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from pydantic import ValidationError

from builder.canvas import UI_EDGE_KEYS, UI_NODE_KEYS, CanvasHeader, EdgeModel, NodeModel
from builder.catalog import NodeCatalog, NodeConfig, NodeTypeSpec
from builder.conditions import OPERATORS, UNARY_OPERATORS
from builder.inputs import check_input_declarations
from builder.issues import Issue, errors_of
from builder.plan import (
    TOP,
    CachePolicy,
    EdgeConditionSpec,
    Plan,
    PlanEdge,
    PlanNode,
    RetryPolicy,
    Scope,
    content_hash,
)
from builder.references import check_references
from builder.graph import find_cycles, longest_path_levels

RESERVED_IDS = frozenset({"inputs", "var", "env", "loop", "parallel", "run", "nodes"})


@dataclass(frozen=True)
class Draft:
    """Everything known about a canvas so far. Stages fill it in, never mutate it."""

    raw: Any
    issues: tuple[Issue, ...] = ()
    header: CanvasHeader | None = None
    nodes: Mapping[str, NodeModel] = field(default_factory=dict)
    edges: Mapping[str, EdgeModel] = field(default_factory=dict)
    specs: Mapping[str, NodeTypeSpec] = field(default_factory=dict)
    configs: Mapping[str, NodeConfig] = field(default_factory=dict)
    scope_of: Mapping[str, str] = field(default_factory=dict)
    handles: Mapping[str, str] = field(default_factory=dict)
    """Source handle of each valid edge; edges with problems are left out."""
    excluded: frozenset[str] = frozenset()
    """Nodes not reachable from ``start``: reported, not run."""
    levels: Mapping[str, int] = field(default_factory=dict)
    references: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def add(self, *issues: Issue, **changes: Any) -> Draft:
        return replace(self, issues=self.issues + issues, **changes)


@dataclass(frozen=True)
class CompileResult:
    plan: Plan | None
    issues: tuple[Issue, ...]

    @property
    def ok(self) -> bool:
        return self.plan is not None

    @property
    def errors(self) -> list[Issue]:
        return errors_of(self.issues)

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]


def compile_canvas(raw: Any, catalog: NodeCatalog) -> CompileResult:
    draft = parse_document(Draft(raw=raw))
    draft = check_nodes(draft, catalog)
    draft = build_containers(draft)
    draft = check_edges(draft)
    draft = mark_reachable(draft)
    draft = check_graph_cycles(draft)
    draft = check_references(draft)
    return build_plan(draft)


# --- stage 1: parse -------------------------------------------------------------------


def _path(loc: tuple[Any, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_issues(
    error: ValidationError, *, code: str, prefix: str = "", node_id: str | None = None,
    edge_id: str | None = None, what: str = ""
) -> list[Issue]:
    issues = []
    for err in error.errors(include_url=False):
        where = _path(tuple(err["loc"]), prefix)
        issues.append(
            Issue(code, f"{what}{where}: {err['msg']}", node_id=node_id, edge_id=edge_id, field=where)
        )
    return issues


def parse_document(draft: Draft) -> Draft:
    raw = draft.raw
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        return draft.add(Issue("not_an_object", f"a canvas is a JSON object, got {kind}"))
    issues: list[Issue] = []
    header_raw = {k: v for k, v in raw.items() if k not in ("nodes", "edges")}
    header = None
    try:
        header = CanvasHeader.model_validate(header_raw)
    except ValidationError as exc:
        issues += validation_issues(exc, code="invalid_document")
    if header is not None:
        issues += check_input_declarations(header.inputs)

    nodes: dict[str, NodeModel] = {}
    raw_nodes = raw.get("nodes", [])
    if not isinstance(raw_nodes, list):
        issues.append(Issue("invalid_document", "nodes must be a list", field="nodes"))
        raw_nodes = []
    for index, item in enumerate(raw_nodes):
        where = f"nodes[{index}]"
        node_id = item.get("id") if isinstance(item, dict) else None
        node_id = node_id if isinstance(node_id, str) else None
        try:
            node = NodeModel.model_validate(item)
        except ValidationError as exc:
            issues += validation_issues(exc, code="invalid_node", node_id=node_id, prefix="",
                                        what=f"{where} ")
            continue
        if node.id in nodes:
            issues.append(Issue("duplicate_node_id", f"node id {node.id!r} is used by more than one node "
                                f"({where} repeats it)", node_id=node.id, field="id"))
            continue
        if node.id in RESERVED_IDS:
            issues.append(Issue("reserved_id", f"node id {node.id!r} is reserved for the template "
                                f"namespace of that name; rename the node", node_id=node.id, field="id"))
        for key in sorted((node.model_extra or {}).keys() - UI_NODE_KEYS):
            issues.append(Issue("unknown_key", f"unknown key {key!r} on node is ignored",
                                node_id=node.id, field=key, severity="warning"))
        nodes[node.id] = node

    edges: dict[str, EdgeModel] = {}
    raw_edges = raw.get("edges", [])
    if not isinstance(raw_edges, list):
        issues.append(Issue("invalid_document", "edges must be a list", field="edges"))
        raw_edges = []
    for index, item in enumerate(raw_edges):
        edge_id = item.get("id") if isinstance(item, dict) else None
        edge_id = edge_id if isinstance(edge_id, str) and edge_id else f"edges[{index}]"
        try:
            edge = EdgeModel.model_validate(item)
        except ValidationError as exc:
            issues += validation_issues(exc, code="invalid_edge", edge_id=edge_id,
                                        what=f"edges[{index}] ")
            continue
        if edge_id in edges:
            issues.append(Issue("duplicate_edge_id", f"edge id {edge_id!r} is used by more than one edge",
                                edge_id=edge_id, field="id"))
            continue
        for key in sorted((edge.model_extra or {}).keys() - UI_EDGE_KEYS):
            issues.append(Issue("unknown_key", f"unknown key {key!r} on edge is ignored",
                                edge_id=edge_id, field=key, severity="warning"))
        edges[edge_id] = edge.model_copy(update={"id": edge_id})
    return draft.add(*issues, header=header, nodes=MappingProxyType(nodes),
                     edges=MappingProxyType(edges))


# --- stage 2: node types and their configuration ----------------------------------------


def check_nodes(draft: Draft, catalog: NodeCatalog) -> Draft:
    issues: list[Issue] = []
    specs: dict[str, NodeTypeSpec] = {}
    configs: dict[str, NodeConfig] = {}
    known = None
    starts = []
    for node in draft.nodes.values():
        spec = catalog.spec(node.type)
        if spec is None:
            known = known or ", ".join(sorted(catalog.types()))
            issues.append(Issue("unknown_node_type", f"unknown node type {node.type!r}; known types: {known}",
                                node_id=node.id, field="type"))
            continue
        specs[node.id] = spec
        try:
            config = spec.config_model.model_validate(node.data)
        except ValidationError as exc:
            issues += validation_issues(exc, code="invalid_config", node_id=node.id, prefix="data")
            continue
        configs[node.id] = config
        for key in sorted((config.model_extra or {}).keys()):
            issues.append(Issue("unknown_key", f"unknown key {key!r} in data of a {node.type} node is ignored",
                                node_id=node.id, field=f"data.{key}", severity="warning"))
        if node.cache is not None and node.cache.enabled and not spec.cacheable:
            issues.append(Issue("not_cacheable", f"{node.type} nodes have side effects and are never cached",
                                node_id=node.id, field="cache.enabled", severity="warning"))
        if node.type == "start":
            starts.append(node.id)
    if len(starts) > 1:
        issues.append(Issue("multiple_start", f"a canvas has at most one start node; found {', '.join(starts)}",
                            node_id=starts[1], field="type", related=tuple(starts)))
    return draft.add(*issues, specs=MappingProxyType(specs), configs=MappingProxyType(configs))


# --- stage 3: containers ------------------------------------------------------------------


def build_containers(draft: Draft) -> Draft:
    issues: list[Issue] = []
    scope_of: dict[str, str] = {}
    for node in draft.nodes.values():
        parent = node.parentId
        if not parent:
            scope_of[node.id] = TOP
            continue
        if parent not in draft.nodes:
            issues.append(Issue("unknown_parent", f"parentId {parent!r} is not a node", node_id=node.id,
                                field="parentId"))
            scope_of[node.id] = TOP
            continue
        parent_spec = draft.specs.get(parent)
        if parent_spec is not None and parent_spec.container is None:
            issues.append(Issue("parent_not_container",
                                f"parentId {parent!r} is a {parent_spec.type} node; only loop and "
                                f"parallel nodes contain other nodes", node_id=node.id, field="parentId",
                                related=(parent,)))
            scope_of[node.id] = TOP
            continue
        scope_of[node.id] = parent

    # A chain of parentIds that comes back to itself cannot be nested.
    for node_id in scope_of:
        seen = [node_id]
        current = scope_of[node_id]
        while current != TOP:
            if current in seen:
                cycle = seen[seen.index(current):]
                if node_id == min(cycle):
                    issues.append(Issue("container_cycle", "containers contain each other: "
                                        + " -> ".join(cycle + [current]), node_id=node_id,
                                        field="parentId", related=tuple(cycle)))
                break
            seen.append(current)
            current = scope_of.get(current, TOP)
    cyclic = {i.node_id for i in issues if i.code == "container_cycle"} | {
        r for i in issues if i.code == "container_cycle" for r in i.related}
    for node_id in cyclic:
        scope_of[node_id] = TOP

    for node in draft.nodes.values():
        if node.type == "start" and scope_of[node.id] != TOP:
            issues.append(Issue("start_in_container", "a start node cannot be inside a container",
                                node_id=node.id, field="parentId"))
    bodies = defaultdict(int)
    for scope in scope_of.values():
        bodies[scope] += 1
    for node_id, spec in draft.specs.items():
        if spec.container and not bodies.get(node_id):
            issues.append(Issue("empty_container", f"{spec.type} {node_id!r} has no body nodes "
                                f"(nodes with parentId {node_id!r})", node_id=node_id, severity="warning"))
    return draft.add(*issues, scope_of=MappingProxyType(scope_of))


def container_path(scope_of: Mapping[str, str], node_id: str) -> list[str]:
    """Enclosing containers of a node, innermost first."""
    path = []
    current = scope_of.get(node_id, TOP)
    while current != TOP:
        path.append(current)
        current = scope_of.get(current, TOP)
    return path


# --- stage 4: edges and handles -------------------------------------------------------------


def check_edges(draft: Draft) -> Draft:
    issues: list[Issue] = []
    handles: dict[str, str] = {}
    seen_pairs: set[tuple[str, str, str]] = set()
    for edge_id, edge in draft.edges.items():
        problems = []
        for end in ("source", "target"):
            node_id = getattr(edge, end)
            if node_id not in draft.nodes:
                problems.append(Issue("dangling_edge", f"{end} {node_id!r} is not a node", edge_id=edge_id,
                                      field=end))
        if problems:
            issues += problems
            continue
        source, target = draft.nodes[edge.source], draft.nodes[edge.target]
        handle = edge.sourceHandle or "source"
        s_scope, t_scope = draft.scope_of[source.id], draft.scope_of[target.id]
        if s_scope != t_scope:
            issues.append(Issue("edge_crosses_container",
                                f"edge {source.id} -> {target.id} crosses a container boundary "
                                f"({_scope_name(s_scope)} to {_scope_name(t_scope)}); connect the container "
                                f"itself instead", edge_id=edge_id, related=(source.id, target.id)))
            continue
        if target.type == "start":
            issues.append(Issue("edge_into_start", "a start node cannot have incoming edges",
                                edge_id=edge_id, field="target", related=(target.id,)))
            continue
        spec, config = draft.specs.get(source.id), draft.configs.get(source.id)
        if spec is not None and config is not None:
            offered = spec.handles(config)
            if handle not in offered:
                offers = ", ".join(sorted(offered)) or "no handles"
                issues.append(Issue("unknown_handle", f"{source.type} node {source.id!r} has no handle "
                                    f"{handle!r}; it offers {offers}", edge_id=edge_id, field="sourceHandle",
                                    related=(source.id,)))
                continue
        condition = edge.data.condition if edge.data else None
        if condition is not None:
            if condition.operator not in OPERATORS:
                issues.append(Issue("unknown_operator", f"unknown operator {condition.operator!r}; use one of "
                                    + ", ".join(sorted(OPERATORS)), edge_id=edge_id,
                                    field="data.condition.operator"))
                continue
            if condition.operator not in UNARY_OPERATORS and "value" not in (
                edge.data.model_dump(exclude_unset=True).get("condition") or {}
            ):
                issues.append(Issue("missing_value", f"operator {condition.operator!r} needs a value",
                                    edge_id=edge_id, field="data.condition.value"))
                continue
        key = (source.id, handle, target.id)
        if key in seen_pairs:
            issues.append(Issue("duplicate_edge", f"another edge already joins {source.id} ({handle}) to "
                                f"{target.id}", edge_id=edge_id, severity="warning"))
        seen_pairs.add(key)
        handles[edge_id] = handle
    return draft.add(*issues, handles=MappingProxyType(handles))


def _scope_name(scope: str) -> str:
    return "the top level" if scope == TOP else f"the body of {scope!r}"


# --- stage 5: reachability ------------------------------------------------------------------------


def mark_reachable(draft: Draft) -> Draft:
    starts = [n.id for n in draft.nodes.values() if n.type == "start" and draft.scope_of[n.id] == TOP]
    if not starts:
        return draft
    successors = defaultdict(list)
    for edge_id in draft.handles:
        edge = draft.edges[edge_id]
        successors[edge.source].append(edge.target)
    reached = set(starts)
    queue = deque(starts)
    while queue:
        for nxt in successors[queue.popleft()]:
            if nxt not in reached:
                reached.add(nxt)
                queue.append(nxt)
    excluded = set()
    issues = []
    for node_id, scope in draft.scope_of.items():
        top = node_id if scope == TOP else container_path(draft.scope_of, node_id)[-1]
        if top not in reached:
            excluded.add(node_id)
            if scope == TOP:
                issues.append(Issue("unreachable", f"node {node_id!r} cannot be reached from start "
                                    f"{starts[0]!r} and will not run", node_id=node_id, severity="warning"))
    return draft.add(*issues, excluded=frozenset(excluded))


# --- stage 6: cycles and levels ----------------------------------------------------------------------


def check_graph_cycles(draft: Draft) -> Draft:
    by_scope: dict[str, list[str]] = defaultdict(list)
    for node_id, scope in draft.scope_of.items():
        if node_id not in draft.excluded:
            by_scope[scope].append(node_id)
    successors: dict[str, list[str]] = defaultdict(list)
    for edge_id in draft.handles:
        edge = draft.edges[edge_id]
        if edge.source not in draft.excluded and edge.target not in draft.excluded:
            successors[edge.source].append(edge.target)
    issues = []
    levels: dict[str, int] = {}
    for scope, members in by_scope.items():
        for cycle in find_cycles(members, successors):
            where = "" if scope == TOP else f" inside {scope!r}"
            hint = "" if scope != TOP else "; use a loop container to repeat work"
            issues.append(Issue("cycle", f"cycle{where}: {' -> '.join(cycle + [cycle[0]])}{hint}",
                                node_id=cycle[0], related=tuple(cycle)))
        levels.update(longest_path_levels(members, successors))
    return draft.add(*issues, levels=MappingProxyType(levels))


# --- stage 8: the plan ------------------------------------------------------------------------------


def _retry_policy(node: NodeModel, spec: NodeTypeSpec) -> RetryPolicy:
    base = spec.default_retry
    if node.retry is None:
        return base
    given = node.retry.model_dump(exclude_none=True)
    if "retry_on" in given:
        given["retry_on"] = frozenset(given["retry_on"])
    return replace(base, **given)


def _cache_policy(node: NodeModel, spec: NodeTypeSpec) -> CachePolicy:
    if not spec.cacheable:
        return CachePolicy(enabled=False)
    if node.cache is None:
        return spec.default_cache
    return CachePolicy(enabled=node.cache.enabled, ttl_s=node.cache.ttl_s)


def build_plan(draft: Draft) -> CompileResult:
    if errors_of(draft.issues):
        return CompileResult(plan=None, issues=draft.issues)
    header = draft.header
    assert header is not None
    live = [n for n in draft.nodes.values() if n.id not in draft.excluded]
    edges: dict[str, PlanEdge] = {}
    incoming: dict[str, list[str]] = defaultdict(list)
    outgoing: dict[str, list[str]] = defaultdict(list)
    for edge_id, handle in draft.handles.items():
        edge = draft.edges[edge_id]
        if edge.source in draft.excluded or edge.target in draft.excluded:
            continue
        cond = edge.data.condition if edge.data else None
        edges[edge_id] = PlanEdge(
            id=edge_id, source=edge.source, target=edge.target, handle=handle,
            condition=None if cond is None else EdgeConditionSpec(cond.field, cond.operator, cond.value),
        )
        incoming[edge.target].append(edge_id)
        outgoing[edge.source].append(edge_id)

    nodes: dict[str, PlanNode] = {}
    members: dict[str, list[str]] = defaultdict(list)
    for node in live:
        spec, config = draft.specs[node.id], draft.configs[node.id]
        scope = draft.scope_of[node.id]
        members[scope].append(node.id)
        nodes[node.id] = PlanNode(
            id=node.id, type=node.type, label=node.data.get("label") or node.id, scope=scope,
            data=MappingProxyType(dict(node.data)), retry=_retry_policy(node, spec),
            timeout_s=node.timeout_s, cache=_cache_policy(node, spec), join=node.join,
            handles=spec.handles(config), incoming=tuple(sorted(incoming[node.id])),
            outgoing=tuple(sorted(outgoing[node.id])), references=draft.references.get(node.id, frozenset()),
            level=draft.levels.get(node.id, 0), version=spec.version, container=spec.container,
        )
    scopes = {}
    for scope_id, ids in members.items():
        ordered = tuple(sorted(ids, key=lambda i: (nodes[i].level, i)))
        scopes[scope_id] = Scope(
            id=scope_id, nodes=ordered,
            roots=tuple(i for i in ordered if not nodes[i].incoming),
            terminals=tuple(i for i in ordered if not nodes[i].outgoing),
        )
    for node_id, node in nodes.items():
        if node.container and node_id not in scopes:
            scopes[node_id] = Scope(id=node_id, nodes=(), roots=(), terminals=())
    if TOP not in scopes:
        scopes[TOP] = Scope(id=TOP, nodes=(), roots=(), terminals=())
    plan = Plan(
        name=header.name, description=header.description,
        inputs=MappingProxyType({k: v.model_dump() for k, v in header.inputs.items()}),
        variables=MappingProxyType(dict(header.variables)), output=header.output,
        settings=MappingProxyType(header.settings.model_dump()),
        nodes=MappingProxyType(nodes), edges=MappingProxyType(edges), scopes=MappingProxyType(scopes),
    )
    plan = replace(plan, hash=content_hash(plan.to_dict()))
    return CompileResult(plan=plan, issues=draft.issues)
