"""The line a node execution writes to its flow run's Prefect logs when it ends.

What a person scanning the Prefect UI's logs wants to know, and nothing a log must not
hold: status, duration, attempts, the HTTP status of an ``http`` node, tokens and cost of
an ``llm`` node, the error message (secrets redacted). Never outputs or configurations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from builder.plan import PlanNode
from flows.records import NodeRun
from flows.scheduler import NodeResult


def node_log_line(
    node: PlanNode, name: str, run: NodeRun, outcome: NodeResult, redact: Callable[[Any], Any] = lambda value: value
) -> str:
    """``fetch [2/10] (http) completed in 52 ms, 1 attempt: HTTP 200``."""
    parts = [f"{name} ({node.type}) {outcome.status}"]
    if outcome.restored:
        parts.append("(restored from the run's journal)")
    elif run.duration_ms is not None:
        parts.append(f"in {_duration(run.duration_ms)}")
    attempts = max(run.attempts, 1)
    line = " ".join(parts) + f", {attempts} attempt{'s' if attempts != 1 else ''}"
    details = _details(node, outcome)
    if outcome.error is not None:
        details.append(str(redact(str(outcome.error.get("message", "")))))
    return line + (": " + "; ".join(details) if details else "")


def _duration(ms: int) -> str:
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _details(node: PlanNode, outcome: NodeResult) -> list[str]:
    details: list[str] = []
    output = outcome.output if isinstance(outcome.output, dict) else {}
    status = output.get("status") if node.type == "http" else None
    if isinstance(status, int):
        details.append(f"HTTP {status}")
    usage = outcome.usage or {}
    if "input_tokens" in usage or "output_tokens" in usage:
        tokens = f"{usage.get('input_tokens', 0)} input + {usage.get('output_tokens', 0)} output tokens"
        if isinstance(usage.get("cost_usd"), (int, float)):
            tokens += f", ${usage['cost_usd']:.6f}"
        details.append(tokens)
    return details
