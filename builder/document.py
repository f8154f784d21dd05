"""Stages 1 and 2: the canvas document as models, and each node's configuration.

Stage 1 (``parse_document``) reads the header, then every node and edge on its own, so
that one broken node does not hide the problems of the others. Stage 2 (``check_nodes``)
finds each node's type in the catalog and validates its ``data`` with the type's model.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from builder.canvas import (
    DOCUMENT_EXTRA_KEYS,
    RETRY_CLASSES,
    UI_EDGE_KEYS,
    UI_NODE_KEYS,
    CanvasHeader,
    EdgeModel,
    NodeModel,
)
from builder.catalog import NodeCatalog, NodeConfig, NodeTypeSpec
from builder.draft import Draft
from builder.inputs import check_input_declarations
from builder.issues import Issue, readable_errors
from builder.limits import CompileLimits
from builder.templates import JINJA_GLOBALS, NAMESPACES

RESERVED_IDS = NAMESPACES | JINJA_GLOBALS
"""Node ids a template could not read a node by: its namespaces and the names Jinja provides."""


def parse_document(draft: Draft, limits: CompileLimits = CompileLimits()) -> Draft:
    raw = draft.raw
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        return draft.add(Issue("not_an_object", f"a canvas is a JSON object, got {kind}"))
    too_large = _over_size_caps(raw, limits)
    if too_large:  # counted before anything is validated: the work a canvas costs is bounded first
        return draft.add(*too_large)
    issues: list[Issue] = []
    header_raw = {k: v for k, v in raw.items() if k not in ("nodes", "edges")}
    header, header_issues = _parse_header(header_raw)
    issues += header_issues
    issues += check_input_declarations(header.inputs)
    known = CanvasHeader.model_fields
    for key in sorted((k for k in header_raw if k not in known and k not in DOCUMENT_EXTRA_KEYS), key=str):
        issues.append(
            Issue(
                "unknown_key",
                f"unknown key {key!r} at the top level of the canvas is ignored",
                field=str(key),
                severity="warning",
            )
        )

    nodes: dict[str, NodeModel] = {}
    for index, (item, node) in enumerate(_validated_list(raw, "nodes", NodeModel, issues)):
        if isinstance(node, ValidationError):
            issues += validation_issues(node, code="invalid_node", what=f"nodes[{index}] ", node_id=_raw_id(item))
            continue
        node_id = node.id
        if node_id in nodes:
            issues.append(
                Issue(
                    "duplicate_node_id",
                    f"node id {node_id!r} is used by more than one node (nodes[{index}] repeats it)",
                    node_id=node_id,
                    field="id",
                )
            )
            continue
        if node_id in RESERVED_IDS:
            issues.append(_reserved_id(node_id))
        if node.parentNode is not None:  # React Flow v11 calls parentId parentNode
            if node.parentId is None:
                node.parentId = node.parentNode
            elif node.parentId != node.parentNode:
                issues.append(
                    Issue(
                        "invalid_node",
                        f"nodes[{index}] parentId {node.parentId!r} and parentNode "
                        f"{node.parentNode!r} (React Flow v11's name for it) name different "
                        f"containers; keep one",
                        node_id=node_id,
                        field="parentNode",
                    )
                )
        issues += _unknown_keys(node, UI_NODE_KEYS, "node", node_id=node_id)
        nodes[node_id] = node

    edges: dict[str, EdgeModel] = {}
    for index, (item, edge) in enumerate(_validated_list(raw, "edges", EdgeModel, issues)):
        if isinstance(edge, ValidationError):
            edge_id = _raw_id(item) or f"edges[{index}]"
            issues += validation_issues(edge, code="invalid_edge", edge_id=edge_id, what=f"edges[{index}] ")
            continue
        edge_id = edge.id or f"edges[{index}]"
        if edge_id in edges:
            issues.append(
                Issue(
                    "duplicate_edge_id",
                    f"edge id {edge_id!r} is used by more than one edge",
                    edge_id=edge_id,
                    field="id",
                )
            )
            continue
        issues += _unknown_keys(edge, UI_EDGE_KEYS, "edge", edge_id=edge_id)
        if edge.id != edge_id:
            edge.id = edge_id  # an edge without id is named after its position
        edges[edge_id] = edge
    return draft.add(*issues, header=header, nodes=MappingProxyType(nodes), edges=MappingProxyType(edges))


def _over_size_caps(raw: dict[str, Any], limits: CompileLimits) -> list[Issue]:
    issues = []
    for key, code, cap in (
        ("nodes", "too_many_nodes", limits.max_nodes),
        ("edges", "too_many_edges", limits.max_edges),
    ):
        items = raw.get(key)
        if isinstance(items, list) and len(items) > cap:
            issues.append(
                Issue(
                    code,
                    f"the canvas has {len(items)} {key}; at most {cap} are allowed "
                    f"(FLOWMAESTRO_MAX_CANVAS_{key.upper()})",
                    field=key,
                )
            )
    return issues


def _parse_header(header_raw: dict[str, Any]) -> tuple[CanvasHeader, list[Issue]]:
    """The document's header, and its problems. A bad value does not hide the rest: it is
    reported and left out (the bad entry of ``inputs`` or ``settings``, or the whole
    field), and what remains is kept, so input defaults and output references are still
    checked."""
    try:
        return CanvasHeader.model_validate(header_raw), []
    except ValidationError as exc:
        issues = validation_issues(exc, code="invalid_document")
        errors = exc.errors(include_url=False)
    cleaned = dict(header_raw)
    copied: set[str] = set()
    for err in errors:
        loc = err["loc"]
        if not loc or loc[0] not in cleaned:
            continue
        top, value = loc[0], cleaned[loc[0]]
        if len(loc) > 1 and isinstance(value, dict):
            if loc[1] in value:  # (not when an earlier error of the same entry removed it)
                if top not in copied:
                    value = cleaned[top] = dict(value)
                    copied.add(top)
                del value[loc[1]]
        else:
            del cleaned[top]
    bad_fields = {err["loc"][0] for err in errors if err["loc"]}
    for attempt in (cleaned, {k: v for k, v in cleaned.items() if k not in bad_fields}):
        try:
            return CanvasHeader.model_validate(attempt), issues
        except ValidationError:
            continue
    return CanvasHeader(), issues


def _reserved_id(node_id: str) -> Issue:
    if node_id in NAMESPACES:
        return Issue(
            "reserved_id",
            f"node id {node_id!r} is reserved for the template namespace of that name; rename the node",
            node_id=node_id,
            field="id",
        )
    return Issue(
        "reserved_id",
        f"node id {node_id!r} is the name of a function every template has "
        f"({', '.join(sorted(JINJA_GLOBALS))}), so templates could not read this node by name; "
        f"rename the node",
        node_id=node_id,
        field="id",
    )


def _validated_list(
    raw: dict[str, Any], key: str, model: type[BaseModel], issues: list[Issue]
) -> list[tuple[Any, Any]]:
    """Each item of the list ``raw[key]`` (``nodes`` or ``edges``), with its model or the
    ValidationError of that item alone."""
    items = raw.get(key, [])
    if not isinstance(items, list):
        issues.append(Issue("invalid_document", f"{key} must be a list", field=key))
        items = []
    return list(zip(items, _validate_all(model, items)))


def _raw_id(item: Any) -> str | None:
    """The id a node or edge that did not validate gives itself, when it is text."""
    value = item.get("id") if isinstance(item, dict) else None
    return value if isinstance(value, str) else None


def _unknown_keys(model: BaseModel, drawing_keys: frozenset[str], what: str, **where: str) -> list[Issue]:
    """Warnings for the keys of a node or edge that neither its model nor the canvas
    libraries' drawing (``drawing_keys``) know."""
    extra = model.__pydantic_extra__
    if not extra or extra.keys() <= drawing_keys:
        return []
    return [
        Issue("unknown_key", f"unknown key {key!r} on {what} is ignored", field=key, severity="warning", **where)
        for key in sorted(extra.keys() - drawing_keys)
    ]


def check_nodes(draft: Draft, catalog: NodeCatalog) -> Draft:
    issues: list[Issue] = []
    specs: dict[str, NodeTypeSpec] = {}
    configs: dict[str, NodeConfig] = {}
    known = None
    starts = []
    by_model: dict[type[NodeConfig], list[NodeModel]] = defaultdict(list)
    for node in draft.nodes.values():
        spec = catalog.spec(node.type)
        if spec is not None:
            specs[node.id] = spec
            by_model[spec.config_model].append(node)
    # Each type's configurations validated together (one call per type, not per node).
    checked: dict[str, NodeConfig | ValidationError] = {}
    for model, group in by_model.items():
        for node, result in zip(group, _validate_all(model, [n.data for n in group])):
            checked[node.id] = result
    for node in draft.nodes.values():
        spec = specs.get(node.id)
        if spec is None:
            known = known or ", ".join(sorted(catalog.types()))
            issues.append(
                Issue(
                    "unknown_node_type",
                    f"unknown node type {node.type!r}; known types: {known}",
                    node_id=node.id,
                    field="type",
                )
            )
            continue
        config = checked[node.id]
        if isinstance(config, ValidationError):
            issues += validation_issues(config, code="invalid_config", node_id=node.id, prefix="data")
            continue
        configs[node.id] = config
        extra = config.__pydantic_extra__
        if extra:
            for key in sorted(extra):
                issues.append(
                    Issue(
                        "unknown_key",
                        f"unknown key {key!r} in data of a {node.type} node is ignored",
                        node_id=node.id,
                        field=f"data.{key}",
                        severity="warning",
                    )
                )
        if node.cache is not None and node.cache.enabled and not spec.cacheable:
            issues.append(
                Issue(
                    "not_cacheable",
                    f"{node.type} nodes have side effects and are never cached",
                    node_id=node.id,
                    field="cache.enabled",
                    severity="warning",
                )
            )
        issues += _ignored_settings(node, spec)
        if node.type == "start":
            starts.append(node.id)
    if len(starts) > 1:
        issues.append(
            Issue(
                "multiple_start",
                f"a canvas has at most one start node; found {', '.join(starts)}",
                node_id=starts[1],
                field="type",
                related=tuple(starts),
            )
        )
    return draft.add(*issues, specs=MappingProxyType(specs), configs=MappingProxyType(configs))


def validation_issues(
    error: ValidationError,
    *,
    code: str,
    prefix: str = "",
    node_id: str | None = None,
    edge_id: str | None = None,
    what: str = "",
) -> list[Issue]:
    """One issue per field a pydantic error is about (see ``issues.readable_errors``). The
    field is the issue's ``field``; the message does not repeat it (an issue is shown with
    both, ``field data.x: data.x: ...`` otherwise). ``what`` (``nodes[3] ``) says which item
    of the document the field belongs to, when no id does."""
    return [
        Issue(code, f"{what.strip()}: {message}" if what else message, node_id=node_id, edge_id=edge_id, field=where)
        for where, message in readable_errors(error, prefix)
    ]


def _validate_all(model: type[BaseModel], items: list[Any]) -> list[Any]:
    """Each item validated: the model, or the ValidationError of that item alone. The whole
    list is validated in one call first (the usual case: every item is fine), one by one
    only when some item is not."""
    try:
        return _list_adapter(model).validate_python(items)
    except ValidationError:
        pass
    out: list[Any] = []
    for item in items:
        try:
            out.append(model.model_validate(item))
        except ValidationError as exc:
            out.append(exc)
    return out


@functools.cache
def _list_adapter(model: type[BaseModel]) -> TypeAdapter[Any]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


# Node types that run no handler call of their own: a retry or time limit of the node would
# apply to nothing (a container's bodies, a person's answer, a child run) and is ignored.
_NO_SINGLE_CALL = {
    "approval": "an approval waits for a person (its data.timeout_s bounds the wait)",
    "subworkflow": "a subworkflow node runs a child run (set retries and limits in the child)",
}


def _ignored_settings(node: NodeModel, spec: NodeTypeSpec) -> list[Issue]:
    """Warnings for a node's ``retry`` and ``timeout_s`` that will have no effect."""
    why = (
        f"a {spec.container} runs its body nodes (set them there; settings.timeout_s bounds the run)"
        if spec.container
        else _NO_SINGLE_CALL.get(node.type)
    )
    issues = []
    if why is not None:
        if node.retry is not None and (node.retry.max_attempts or 1) > 1:
            issues.append(
                Issue(
                    "ignored_setting",
                    f"retry is ignored on {node.type} nodes: {why}",
                    node_id=node.id,
                    field="retry",
                    severity="warning",
                )
            )
        if node.timeout_s is not None:
            issues.append(
                Issue(
                    "ignored_setting",
                    f"timeout_s is ignored on {node.type} nodes: {why}",
                    node_id=node.id,
                    field="timeout_s",
                    severity="warning",
                )
            )
    elif (
        node.retry is not None
        and (node.retry.max_attempts or 1) > 1
        and node.retry.retry_on is None
        and not spec.default_retry.retry_on
    ):
        issues.append(
            Issue(
                "retry_on_defaulted",
                f"retry.retry_on is not given and {node.type} nodes retry nothing "
                f"by default: retrying {', '.join(RETRY_CLASSES)}",
                node_id=node.id,
                field="retry.retry_on",
                severity="warning",
            )
        )
    return issues
