"""A readable rendering of a plan for ``flowmaestro plan``."""

from __future__ import annotations

from builder.plan import TOP, Plan, ScopeId


def describe_plan(plan: Plan) -> str:
    lines = [
        f"workflow {plan.name!r}  (plan {plan.hash[:12]})",
        f"  nodes: {len(plan.nodes)}  edges: {len(plan.edges)}  settings: "
        + ", ".join(f"{k}={v}" for k, v in plan.settings.items()),
    ]
    if plan.inputs:
        lines.append(
            "  inputs: "
            + ", ".join(
                f"{name}: {spec['type']}{' (required)' if spec.get('required') else ''}"
                for name, spec in plan.inputs.items()
            )
        )
    lines += _scope_lines(plan, TOP, indent="  ")
    return "\n".join(lines)


def _scope_lines(plan: Plan, scope_id: ScopeId, indent: str) -> list[str]:
    scope = plan.scopes[scope_id]
    lines = []
    by_level: dict[int, list[str]] = {}
    for node_id in scope.nodes:
        by_level.setdefault(plan.nodes[node_id].level, []).append(node_id)
    for level in sorted(by_level):
        lines.append(f"{indent}level {level}:")
        for node_id in by_level[level]:
            node = plan.nodes[node_id]
            extras = []
            if node.join == "any":
                extras.append("join=any")
            if node.retry.max_attempts > 1:
                extras.append(f"retries={node.retry.max_attempts - 1} on {','.join(sorted(node.retry.retry_on))}")
            if node.timeout_s:
                extras.append(f"timeout={node.timeout_s:g}s")
            if node.cache.enabled:
                extras.append("cached" + (f" {node.cache.ttl_s:g}s" if node.cache.ttl_s else ""))
            label = f" {node.label!r}" if node.label != node.id else ""
            lines.append(f"{indent}  {node.id} ({node.type}){label}" + (f"  [{'; '.join(extras)}]" if extras else ""))
            for edge_id in node.outgoing:
                edge = plan.edges[edge_id]
                cond = f" if {edge.condition.operator}" if edge.condition else ""
                lines.append(f"{indent}    --{edge.handle}{cond}--> {edge.target}")
            if node.container:
                lines.append(f"{indent}    body:")
                lines += _scope_lines(plan, node.id, indent + "      ")
    return lines
