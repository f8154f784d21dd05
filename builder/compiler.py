"""The canvas compiler: a pipeline of pure stages from a JSON document to a ``Plan``.

Each stage takes the immutable ``Draft`` built so far and returns a new one with more
facts and, possibly, more issues. No stage stops at the first problem: the result lists
every issue found, errors apart from warnings.

Stages 1 and 2 (the document, the node configurations) are in ``builder.document``,
stage 7 (template references) in ``builder.references``; the graph stages and the plan
are here.
"""

from __future__ import annotations

import gc
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from builder.canvas import RETRY_CLASSES, NodeModel
from builder.catalog import NodeCatalog, NodeTypeSpec
from builder.conditions import OPERATORS, UNARY_OPERATORS, pattern_problem
from builder.document import check_nodes, parse_document
from builder.draft import Draft
from builder.graph import analyse_scope, container_path
from builder.issues import Issue, errors_of
from builder.limits import BudgetExceeded, CompileLimits, Deadline
from builder.plan import (
    TOP,
    CachePolicy,
    EdgeConditionSpec,
    FrozenDict,
    KeyLimit,
    Plan,
    PlanEdge,
    PlanNode,
    RetryPolicy,
    Scope,
    assemble,
    freeze,
    plan_hash,
)
from builder.references import check_references
from builder.skippable import check_skippable_reads
from builder.templates import is_template


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


def compile_canvas(raw: Any, catalog: NodeCatalog, limits: CompileLimits | None = None) -> CompileResult:
    """Every issue of the canvas ``raw``, and its plan when none is an error.

    ``limits`` (``builder.limits``; the defaults when None) bound the work: a canvas over
    a size cap stops at the first stage with one issue naming the cap, nesting deeper than
    allowed stops after the containers' stage (later stages walk the nesting), and past
    the time budget the compile stops with ``compile_time_exceeded``.

    The compile leaves Python's garbage collector alone: it may run in a thread of a server
    (the API) whose other requests must keep theirs. A process that does nothing else
    meanwhile (the CLI) may wrap it in ``collector_paused()``.
    """
    limits = limits or CompileLimits()
    deadline = Deadline(limits.time_budget_s)
    draft = Draft(raw=raw)
    try:
        draft = parse_document(draft, limits)
        if _stopped(draft, "too_many_nodes", "too_many_edges"):
            return CompileResult(plan=None, issues=draft.issues)
        deadline.check("the document")
        draft = check_nodes(draft, catalog)
        deadline.check("node configurations")
        draft = build_containers(draft, limits)
        if _stopped(draft, "container_too_deep"):
            return CompileResult(plan=None, issues=draft.issues)
        draft = check_edges(draft)
        draft = mark_reachable(draft)
        draft = check_graph_cycles(draft)
        deadline.check("the graph")
        draft = check_references(draft, limits, deadline)
        deadline.check("template references")
        draft = check_skippable_reads(draft, deadline)
        return build_plan(draft)
    except BudgetExceeded as exc:
        return CompileResult(
            plan=None,
            issues=draft.issues
            + (
                Issue(
                    "compile_time_exceeded",
                    f"compiling this canvas took longer than {limits.time_budget_s:g} s "
                    f"(stopped while checking {exc.stage}); make it smaller",
                ),
            ),
        )
    except RecursionError:
        # Something nested beyond what the caps measure reached a recursive library
        # (pydantic, Jinja): an issue, not a traceback of a thousand frames per request.
        return CompileResult(
            plan=None,
            issues=draft.issues
            + (
                Issue(
                    "nested_too_deeply",
                    "the canvas is nested too deeply to be compiled (JSON values or "
                    "templates inside one another); flatten it",
                ),
            ),
        )


def _stopped(draft: Draft, *codes: str) -> bool:
    """Whether a stage found an issue that stops the compile there (a cap exceeded)."""
    return any(issue.code in codes for issue in draft.issues)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused, for a process that only compiles meanwhile.

    A compile allocates a few hundred thousand container objects (models, dicts, sets),
    nearly all of which live until it ends and none of which form reference cycles; the
    collector's passes over them (and over every other live object) cost a third or more of
    the compile time (``benchmarks/compile.py --gc-paused`` shows the difference).

    ``gc.disable()`` is process-wide: every thread goes without the collector for that time.
    So only the CLI pauses it (one canvas, nothing else running); ``compile_canvas`` never
    does, since the API compiles in threads while it serves other requests, and a worker runs
    other flows meanwhile. Reference counting frees everything as usual either way. The
    previous state is restored exactly: enabled again only if it was running before.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# --- stage 3: containers ------------------------------------------------------------------


def build_containers(draft: Draft, limits: CompileLimits = CompileLimits()) -> Draft:
    issues: list[Issue] = []
    scope_of: dict[str, str] = {}
    for node in draft.nodes.values():
        parent = node.parentId
        if not parent:
            scope_of[node.id] = TOP
            continue
        if parent not in draft.nodes:
            issues.append(
                Issue("unknown_parent", f"parentId {parent!r} is not a node", node_id=node.id, field="parentId")
            )
            scope_of[node.id] = TOP
            continue
        parent_spec = draft.specs.get(parent)
        if parent_spec is not None and parent_spec.container is None:
            issues.append(
                Issue(
                    "parent_not_container",
                    f"parentId {parent!r} is a {parent_spec.type} node; only loop and "
                    f"parallel nodes contain other nodes",
                    node_id=node.id,
                    field="parentId",
                    related=(parent,),
                )
            )
            scope_of[node.id] = TOP
            continue
        scope_of[node.id] = parent

    # A chain of parentIds that comes back to itself cannot be nested.
    nested = {TOP}  # nodes whose chain of parents is known to end at the top level
    for node_id, current in scope_of.items():
        if current == TOP:
            continue
        seen = [node_id]
        while current not in nested:
            if current in seen:
                cycle = seen[seen.index(current) :]
                if node_id == min(cycle):
                    issues.append(
                        Issue(
                            "container_cycle",
                            "containers contain each other: " + " -> ".join(cycle + [current]),
                            node_id=node_id,
                            field="parentId",
                            related=tuple(cycle),
                        )
                    )
                break
            seen.append(current)
            current = scope_of.get(current, TOP)
        else:
            nested.update(seen)
    cyclic = {i.node_id for i in issues if i.code == "container_cycle"} | {
        r for i in issues if i.code == "container_cycle" for r in i.related
    }
    for node_id in cyclic:
        scope_of[node_id] = TOP

    issues += _too_deep(scope_of, limits.max_container_depth)
    for node in draft.nodes.values():
        if node.type == "start" and scope_of[node.id] != TOP:
            issues.append(
                Issue(
                    "start_in_container", "a start node cannot be inside a container", node_id=node.id, field="parentId"
                )
            )
    bodies = set(scope_of.values())
    for node_id, spec in draft.specs.items():
        if spec.container and node_id not in bodies:
            issues.append(
                Issue(
                    "empty_container",
                    f"{spec.type} {node_id!r} has no body nodes (nodes with parentId {node_id!r})",
                    node_id=node_id,
                    severity="warning",
                )
            )
    return draft.add(*issues, scope_of=MappingProxyType(scope_of))


def _too_deep(scope_of: Mapping[str, str], max_depth: int) -> list[Issue]:
    """An issue for each node nested one level deeper than ``max_depth`` containers (the
    outermost place the cap is passed). ``scope_of`` has no cycles; each chain of parents
    is walked once, so this is linear."""
    depth: dict[str, int] = {TOP: 0}
    issues = []
    for node_id in scope_of:
        path = []
        current = node_id
        while current not in depth:
            path.append(current)
            current = scope_of.get(current, TOP)
        known = depth[current]
        for item in reversed(path):
            known += 1
            depth[item] = known
            if known == max_depth + 2:  # (depth counts the node itself: 1 at the top level)
                issues.append(
                    Issue(
                        "container_too_deep",
                        f"node {item!r} is inside {known - 1} nested containers; at most {max_depth} may nest",
                        node_id=item,
                        field="parentId",
                    )
                )
    return issues


# --- stage 4: edges and handles -------------------------------------------------------------


def check_edges(draft: Draft) -> Draft:
    issues: list[Issue] = []
    handles: dict[str, str] = {}
    seen_pairs: set[tuple[str, str, str]] = set()
    nodes, scope_of, specs, configs = draft.nodes, draft.scope_of, draft.specs, draft.configs
    offered_by: dict[str, frozenset[str]] = {}  # handles of each source node, asked of its type once
    for edge_id, edge in draft.edges.items():
        source, target = nodes.get(edge.source), nodes.get(edge.target)
        if source is None or target is None:
            for end, node_id in (("source", edge.source), ("target", edge.target)):
                if node_id not in nodes:
                    issues.append(
                        Issue("dangling_edge", f"{end} {node_id!r} is not a node", edge_id=edge_id, field=end)
                    )
            continue
        handle = edge.sourceHandle or "source"
        s_scope, t_scope = scope_of[source.id], scope_of[target.id]
        if s_scope != t_scope:
            issues.append(
                Issue(
                    "edge_crosses_container",
                    f"edge {source.id} -> {target.id} crosses a container boundary "
                    f"({_scope_name(s_scope)} to {_scope_name(t_scope)}); connect the container "
                    f"itself instead",
                    edge_id=edge_id,
                    related=(source.id, target.id),
                )
            )
            continue
        if target.type == "start":
            issues.append(
                Issue(
                    "edge_into_start",
                    "a start node cannot have incoming edges",
                    edge_id=edge_id,
                    field="target",
                    related=(target.id,),
                )
            )
            continue
        spec, config = specs.get(source.id), configs.get(source.id)
        if spec is not None and config is not None:
            offered = offered_by.get(source.id)
            if offered is None:
                offered = offered_by[source.id] = spec.handles(config)
            if handle not in offered:
                offers = ", ".join(sorted(offered)) or "no handles"
                issues.append(
                    Issue(
                        "unknown_handle",
                        f"{source.type} node {source.id!r} has no handle {handle!r}; it offers {offers}",
                        edge_id=edge_id,
                        field="sourceHandle",
                        related=(source.id,),
                    )
                )
                continue
        condition = edge.data.condition if edge.data else None
        if condition is not None:
            if condition.operator not in OPERATORS:
                issues.append(
                    Issue(
                        "unknown_operator",
                        f"unknown operator {condition.operator!r}; use one of " + ", ".join(sorted(OPERATORS)),
                        edge_id=edge_id,
                        field="data.condition.operator",
                    )
                )
                continue
            if condition.operator not in UNARY_OPERATORS and "value" not in (
                edge.data.model_dump(exclude_unset=True).get("condition") or {}
            ):
                issues.append(
                    Issue(
                        "missing_value",
                        f"operator {condition.operator!r} needs a value",
                        edge_id=edge_id,
                        field="data.condition.value",
                    )
                )
                continue
            if (
                condition.operator == "matches"
                and isinstance(condition.value, str)
                and not is_template(condition.value)
            ):
                problem = pattern_problem(condition.value)
                if problem is not None:  # a template's pattern is only known when the run gets there
                    issues.append(Issue("invalid_pattern", problem, edge_id=edge_id, field="data.condition.value"))
                    continue
        key = (source.id, handle, target.id)
        if key in seen_pairs:
            issues.append(
                Issue(
                    "duplicate_edge",
                    f"another edge already joins {source.id} ({handle}) to {target.id}",
                    edge_id=edge_id,
                    severity="warning",
                )
            )
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
    scope_of = draft.scope_of
    top_of: dict[str, str] = {}  # the top-level node each node is (or is inside)
    for node_id, scope in scope_of.items():
        if scope == TOP:
            top = node_id
        else:
            top = top_of.get(scope)
            if top is None:
                top = top_of[scope] = container_path(scope_of, node_id)[-1]
        if top not in reached:
            excluded.add(node_id)
            if scope == TOP:
                issues.append(
                    Issue(
                        "unreachable",
                        f"node {node_id!r} cannot be reached from start {starts[0]!r} and will not run",
                        node_id=node_id,
                        severity="warning",
                    )
                )
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
    components: dict[str, str] = {}
    for scope, members in by_scope.items():
        graph = analyse_scope(members, successors)
        for cycle in graph.cycles:
            where = "" if scope == TOP else f" inside {scope!r}"
            path = " -> ".join(cycle.path + cycle.path[:1])
            also = f"; also involved: {', '.join(cycle.others)}" if cycle.others else ""
            hint = "" if scope != TOP else "; use a loop container to repeat work"
            issues.append(
                Issue("cycle", f"cycle{where}: {path}{also}{hint}", node_id=cycle.path[0], related=cycle.members)
            )
        levels.update(graph.levels)
        components.update(graph.component)
    return draft.add(*issues, levels=MappingProxyType(levels), components=MappingProxyType(components))


# --- stage 8: the plan ------------------------------------------------------------------------------


def _retry_policy(node: NodeModel, spec: NodeTypeSpec) -> RetryPolicy:
    base = spec.default_retry
    if node.retry is None:
        return base
    given = node.retry.model_dump(exclude_none=True)
    if "retry_on" in given:
        given["retry_on"] = frozenset(given["retry_on"])
    elif not base.retry_on and given.get("max_attempts", 1) > 1:
        # Attempts asked for on a type that retries nothing by default: retry what can be
        # retried (a warning of check_nodes says so), rather than silently nothing.
        given["retry_on"] = frozenset(RETRY_CLASSES)
    return replace(base, **given)


def _cache_policy(node: NodeModel, spec: NodeTypeSpec) -> CachePolicy:
    if not spec.cacheable:
        return CachePolicy(enabled=False)
    if node.cache is None:
        return spec.default_cache
    return CachePolicy(enabled=node.cache.enabled, ttl_s=node.cache.ttl_s)


def build_plan(draft: Draft) -> CompileResult:
    """The plan, when no stage found an error. It shares nothing with the canvas: node
    data, variables, output, input declarations and edge conditions are deep read-only
    copies (``plan.freeze``)."""
    if errors_of(draft.issues):
        return CompileResult(plan=None, issues=draft.issues)
    header = draft.header
    assert header is not None
    excluded = draft.excluded
    edges: dict[str, PlanEdge] = {}
    incoming: dict[str, list[str]] = defaultdict(list)
    outgoing: dict[str, list[str]] = defaultdict(list)
    draft_edges = draft.edges
    for edge_id, handle in draft.handles.items():
        edge = draft_edges[edge_id]
        if edge.source in excluded or edge.target in excluded:
            continue
        cond = edge.data.condition if edge.data else None
        edges[edge_id] = assemble(
            PlanEdge,
            {
                "id": edge_id,
                "source": edge.source,
                "target": edge.target,
                "handle": handle,
                "condition": None
                if cond is None
                else EdgeConditionSpec(freeze(cond.field), cond.operator, freeze(cond.value)),
            },
        )
        incoming[edge.target].append(edge_id)
        outgoing[edge.source].append(edge_id)

    nodes: dict[str, PlanNode] = {}
    members: dict[str, list[str]] = defaultdict(list)
    no_edges: tuple[str, ...] = ()
    no_references: frozenset[str] = frozenset()
    levels, references = draft.levels, draft.references
    specs, configs, scope_of = draft.specs, draft.configs, draft.scope_of
    for node in draft.nodes.values():
        node_id = node.id
        if node_id in excluded:
            continue
        spec, config = specs[node_id], configs[node_id]
        scope = scope_of[node_id]
        members[scope].append(node_id)
        ins, outs = incoming.get(node_id), outgoing.get(node_id)
        nodes[node_id] = assemble(
            PlanNode,
            {
                "id": node_id,
                "type": node.type,
                "label": config.label or node_id,
                "scope": scope,
                "data": freeze(node.data),
                "retry": _retry_policy(node, spec),
                "timeout_s": node.timeout_s,
                "cache": _cache_policy(node, spec),
                "join": node.join,
                "handles": spec.handles(config),
                "incoming": tuple(sorted(ins)) if ins else no_edges,
                "outgoing": tuple(sorted(outs)) if outs else no_edges,
                "references": references.get(node_id, no_references),
                "level": levels.get(node_id, 0),
                "version": spec.version,
                "container": spec.container,
                "replay": node.replay,
                "concurrency": None
                if node.concurrency is None
                else KeyLimit(node.concurrency.key, node.concurrency.limit),
                "rate_limit": None
                if node.rate_limit is None
                else KeyLimit(node.rate_limit.key, node.rate_limit.per_minute),
            },
        )
    scopes = {}
    for scope_id, ids in members.items():
        ordered = tuple(sorted(ids, key=lambda i: (nodes[i].level, i)))
        scopes[scope_id] = Scope(
            id=scope_id,
            nodes=ordered,
            roots=tuple(i for i in ordered if not nodes[i].incoming),
            terminals=tuple(i for i in ordered if not nodes[i].outgoing),
        )
    for node_id, node in nodes.items():
        if node.container and node_id not in scopes:
            scopes[node_id] = Scope(id=node_id, nodes=(), roots=(), terminals=())
    if TOP not in scopes:
        scopes[TOP] = Scope(id=TOP, nodes=(), roots=(), terminals=())
    plan = Plan(
        name=header.name,
        description=header.description,
        inputs=FrozenDict({k: freeze(v.model_dump()) for k, v in header.inputs.items()}),
        variables=freeze(dict(header.variables)),
        output=freeze(header.output),
        settings=freeze(header.settings.model_dump()),
        nodes=MappingProxyType(nodes),
        edges=MappingProxyType(edges),
        scopes=MappingProxyType(scopes),
    )
    plan = replace(plan, hash=plan_hash(plan))
    return CompileResult(plan=plan, issues=draft.issues)
