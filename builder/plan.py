"""The execution plan: an immutable, serializable value the engine runs.

A plan is what the compiler produces from a valid canvas. It carries, per node, its
type, resolved settings (retry, timeout, cache, join), its incoming and outgoing edges
with handles, and the container structure as scopes. ``Plan.hash`` is a content hash of
the canonical JSON form: the same canvas yields the same hash whatever its key or node
order.

A plan shares nothing with the canvas it was compiled from and cannot be changed: the JSON
values it carries (node ``data``, ``variables``, ``output``, input declarations, edge
conditions) are deep copies made of :class:`FrozenDict` and :class:`FrozenList`, which are
``dict`` and ``list`` for every reader (``isinstance``, ``json.dumps``, pydantic, Jinja)
but refuse every change with ``TypeError``. :func:`thaw` gives back plain, mutable copies.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

NodeId = str
EdgeId = str
ScopeId = str  # "" is the top level; otherwise the container node's id

TOP: ScopeId = ""
_T = TypeVar("_T")


# --------------------------------------------------------------------------- read-only JSON values


def _refuse(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(
        f"a {type(self).__name__} is read-only: a compiled plan cannot be changed (thaw() gives a mutable copy)"
    )


class FrozenDict(dict):  # type: ignore[type-arg]
    """A ``dict`` that refuses changes. Reading, iterating, ``dict(x)``, ``x | y`` and
    ``json.dumps`` work as for any dict (``dict(x)`` and ``x.copy()`` are plain dicts)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:  # pickle without going through __setitem__
        return type(self), (dict(self),)

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return type(self)({key: copy.deepcopy(value, memo) for key, value in self.items()})


class FrozenList(list):  # type: ignore[type-arg]
    """A ``list`` that refuses changes (a JSON array of a plan); ``list(x)`` is a plain list."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = extend = insert = pop = remove = clear = sort = (
        reverse
    ) = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (list(self),)

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenList:
        return type(self)(copy.deepcopy(value, memo) for value in self)


_EMPTY_DICT = FrozenDict()
_EMPTY_LIST = FrozenList()


_ATOMS = frozenset({str, int, float, bool, type(None)})
_set_item = dict.__setitem__
_set_element = list.__setitem__


def freeze(value: Any) -> Any:
    """A deep, read-only copy of a JSON-like value: mappings become :class:`FrozenDict`,
    lists and tuples :class:`FrozenList`; strings, numbers, booleans and None are kept
    (they are immutable), as is anything else."""
    kind = type(value)
    if kind is dict:
        if not value:
            return _EMPTY_DICT
        out = FrozenDict(value)  # a copy made in C; containers inside are replaced below
        for key, item in value.items():
            if type(item) not in _ATOMS:
                _set_item(out, key, freeze(item))
        return out
    if kind is list:
        if not value:
            return _EMPTY_LIST
        out_list = FrozenList(value)
        for index, item in enumerate(value):
            if type(item) not in _ATOMS:
                _set_element(out_list, index, freeze(item))
        return out_list
    if kind in _ATOMS or kind is FrozenDict or kind is FrozenList:
        return value  # (a FrozenDict/FrozenList made by freeze() is frozen all the way down)
    if isinstance(value, Mapping):
        return FrozenDict({key: freeze(item) for key, item in value.items()}) if value else _EMPTY_DICT
    if isinstance(value, (list, tuple)):
        return FrozenList([freeze(item) for item in value]) if value else _EMPTY_LIST
    return value


def thaw(value: Any) -> Any:
    """A deep, mutable copy of a (frozen) JSON-like value: mappings become ``dict``, lists
    and tuples ``list``."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(item) for item in value]
    return value


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    initial_delay_s: float = 1.0
    backoff_factor: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.0
    retry_on: frozenset[str] = frozenset()

    def delays(self) -> tuple[float, ...]:
        """Delay before each retry (attempt 2, 3, ...), exponential and capped."""
        return tuple(
            min(self.initial_delay_s * self.backoff_factor**i, self.max_delay_s) for i in range(self.max_attempts - 1)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "initial_delay_s": self.initial_delay_s,
            "backoff_factor": self.backoff_factor,
            "max_delay_s": self.max_delay_s,
            "jitter": self.jitter,
            "retry_on": sorted(self.retry_on),
        }


@dataclass(frozen=True)
class CachePolicy:
    enabled: bool = False
    ttl_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "ttl_s": self.ttl_s}


@dataclass(frozen=True)
class EdgeConditionSpec:
    field: Any
    operator: str
    value: Any = None


@dataclass(frozen=True)
class PlanEdge:
    id: EdgeId
    source: NodeId
    target: NodeId
    handle: str = "source"
    condition: EdgeConditionSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        cond = self.condition
        return {
            "id": self.id,
            "source": self.source,
            "target": self.target,
            "handle": self.handle,
            "condition": None
            if cond is None
            else {"field": thaw(cond.field), "operator": cond.operator, "value": thaw(cond.value)},
        }


@dataclass(frozen=True)
class KeyLimit:
    """A node's ``concurrency`` (``limit``: executions at once) or ``rate_limit``
    (``limit``: starts a minute); ``key`` is a template, resolved per node execution."""

    key: str
    limit: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "limit": self.limit}


@dataclass(frozen=True)
class PlanNode:
    id: NodeId
    type: str
    label: str
    scope: ScopeId
    """The container this node belongs to (``TOP`` for top-level nodes)."""
    data: Mapping[str, Any]
    """The node's configuration as written (templates unresolved): a deeply read-only
    copy (:class:`FrozenDict`)."""
    retry: RetryPolicy
    timeout_s: float | None
    cache: CachePolicy
    join: str
    handles: frozenset[str]
    incoming: tuple[EdgeId, ...]
    outgoing: tuple[EdgeId, ...]
    references: frozenset[NodeId]
    """Upstream nodes whose outputs this node's templates read."""
    level: int
    """Longest distance from a root of its scope; for display and ordering."""
    version: str = "1"
    container: str | None = None
    """``loop`` or ``parallel`` when this node is a container."""
    replay: bool = True
    """Restored from the run's journal when the run executes again (``flows.journal``)."""
    concurrency: KeyLimit | None = None
    """At most ``limit`` executions with the same resolved key at once (``flows.node_limits``)."""
    rate_limit: KeyLimit | None = None
    """At most ``limit`` starts a minute with the same resolved key (``flows.node_limits``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "label": self.label,
            "scope": self.scope,
            "data": thaw(self.data),
            "retry": self.retry.to_dict(),
            "timeout_s": self.timeout_s,
            "cache": self.cache.to_dict(),
            "join": self.join,
            "handles": sorted(self.handles),
            "incoming": list(self.incoming),
            "outgoing": list(self.outgoing),
            "references": sorted(self.references),
            "level": self.level,
            "version": self.version,
            "container": self.container,
            "replay": self.replay,
            "concurrency": None if self.concurrency is None else self.concurrency.to_dict(),
            "rate_limit": None if self.rate_limit is None else self.rate_limit.to_dict(),
        }


@dataclass(frozen=True)
class Scope:
    """The nodes run together: the top level, or one container's body."""

    id: ScopeId
    nodes: tuple[NodeId, ...]
    roots: tuple[NodeId, ...]
    """Nodes without incoming edges: they start when the scope starts."""
    terminals: tuple[NodeId, ...]
    """Nodes without outgoing edges: their outputs make a body's result."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "nodes": list(self.nodes), "roots": list(self.roots), "terminals": list(self.terminals)}


@dataclass(frozen=True)
class Plan:
    name: str
    description: str | None
    inputs: Mapping[str, Mapping[str, Any]]
    variables: Mapping[str, Any]
    output: Any
    settings: Mapping[str, Any]
    nodes: Mapping[NodeId, PlanNode]
    edges: Mapping[EdgeId, PlanEdge]
    scopes: Mapping[ScopeId, Scope]
    hash: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-ready form; nodes, edges and scopes sorted by id."""
        return {
            "name": self.name,
            "description": self.description,
            "inputs": {k: thaw(v) for k, v in sorted(self.inputs.items())},
            "variables": thaw(self.variables),
            "output": thaw(self.output),
            "settings": thaw(self.settings),
            "nodes": [self.nodes[k].to_dict() for k in sorted(self.nodes)],
            "edges": [self.edges[k].to_dict() for k in sorted(self.edges)],
            "scopes": [self.scopes[k].to_dict() for k in sorted(self.scopes)],
            "hash": self.hash,
        }


def assemble(cls: type[_T], fields: dict[str, Any]) -> _T:
    """An instance of a frozen plan class (``PlanNode``, ``PlanEdge``...) from a dict of
    *all* its fields. The same object the constructor makes, without the generated
    ``__init__``'s ``object.__setattr__`` per field: about twice as fast, which counts for
    the compiler on 10k-node canvases."""
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", fields)
    return obj


def content_hash(plan_dict: Mapping[str, Any]) -> str:
    """The hash of a plan from its ``to_dict()`` form; equals ``Plan.hash``."""
    header = {key: plan_dict[key] for key in _HEADER_KEYS}
    policies: dict[str, int] = {}  # canonical text of (retry, cache, handles) -> its number
    nodes = []
    for n in sorted(plan_dict["nodes"], key=lambda n: n["id"]):
        policy = _canonical(
            [_retry_key(n["retry"]), [n["cache"]["enabled"], n["cache"]["ttl_s"]], sorted(n["handles"])]
        )
        number = policies.setdefault(policy, len(policies))
        nodes.append(
            [
                n["id"],
                n["type"],
                n["scope"],
                n["data"],
                number,
                n["timeout_s"],
                n["join"],
                n["version"],
                n["container"],
                *_replay_key(n.get("replay", True)),
                *_limits_key(n.get("concurrency"), n.get("rate_limit")),
            ]
        )
    edges = [
        [e["id"], e["source"], e["target"], e["handle"], e["condition"]]
        for e in sorted(plan_dict["edges"], key=lambda e: e["id"])
    ]
    return _digest(header, list(policies), nodes, edges)


def plan_hash(plan: Plan) -> str:
    """The content hash of a plan, computed from the plan itself (no ``to_dict()``).

    It is a BLAKE2b-256 digest of the canonical JSON (sorted keys, compact) of the
    document's header (name, description, inputs, variables, output, settings), of every
    node's own settings (id, type, scope, data, retry, timeout, cache, join, handles,
    version, container) and of every edge (id, source, target, handle, condition), nodes
    and edges sorted by id; each distinct (retry, cache, handles) triple is written once,
    numbered in order of first use, and nodes give its number. What the compiler derives
    from all this (incoming/outgoing edges, references, levels, scopes, labels) is left
    out: it follows from them, and ``PLAN_FORMAT`` changes when the way it follows does.
    """
    header = {
        "name": plan.name,
        "description": plan.description,
        "inputs": plan.inputs,
        "variables": plan.variables,
        "output": plan.output,
        "settings": plan.settings,
    }
    # Most nodes share their type's policies and handle set: keyed by identity first (the
    # plan keeps those objects alive meanwhile), then by content.
    by_identity: dict[tuple[int, int, int], int] = {}
    policies: dict[str, int] = {}
    nodes = []
    plan_nodes = plan.nodes
    for node_id in sorted(plan_nodes):
        node = plan_nodes[node_id]
        retry, cache, handles = node.retry, node.cache, node.handles
        identity = (id(retry), id(cache), id(handles))
        number = by_identity.get(identity)
        if number is None:
            policy = _canonical([_retry_key(retry.to_dict()), [cache.enabled, cache.ttl_s], sorted(handles)])
            number = by_identity[identity] = policies.setdefault(policy, len(policies))
        nodes.append(
            [
                node.id,
                node.type,
                node.scope,
                node.data,
                number,
                node.timeout_s,
                node.join,
                node.version,
                node.container,
                *_replay_key(node.replay),
                *_limits_key(
                    None if node.concurrency is None else node.concurrency.to_dict(),
                    None if node.rate_limit is None else node.rate_limit.to_dict(),
                ),
            ]
        )
    edges = []
    for edge_id in sorted(plan.edges):
        edge = plan.edges[edge_id]
        cond = edge.condition
        edges.append(
            [
                edge.id,
                edge.source,
                edge.target,
                edge.handle,
                None if cond is None else {"field": cond.field, "operator": cond.operator, "value": cond.value},
            ]
        )
    return _digest(header, list(policies), nodes, edges)


def _replay_key(replay: bool) -> list[bool]:
    """Only ``replay: false`` enters the hash, so plans written before it existed keep theirs."""
    return [] if replay else [False]


def _limits_key(concurrency: Mapping[str, Any] | None, rate_limit: Mapping[str, Any] | None) -> list[Any]:
    """Only nodes with a limit enter it in the hash, so plans written before limits existed keep theirs."""
    if concurrency is None and rate_limit is None:
        return []
    return [{"concurrency": concurrency, "rate_limit": rate_limit}]


PLAN_FORMAT = 2
"""Version of what ``plan_hash`` covers and of how the compiler derives the rest."""

_HEADER_KEYS = ("name", "description", "inputs", "variables", "output", "settings")


def _retry_key(retry: Mapping[str, Any]) -> list[Any]:
    return [
        retry["max_attempts"],
        retry["initial_delay_s"],
        retry["backoff_factor"],
        retry["max_delay_s"],
        retry["jitter"],
        sorted(retry["retry_on"]),
    ]


def _canonical(value: Any) -> str:
    # (No check for circular values: plan data is JSON, and freeze() would not end either.)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, check_circular=False)


def _digest(header: Mapping[str, Any], policies: list[str], nodes: list[Any], edges: list[Any]) -> str:
    canonical = _canonical([PLAN_FORMAT, header, policies, nodes, edges])
    return hashlib.blake2b(canonical.encode(), digest_size=32).hexdigest()
