"""The engine's policies: small pure decisions about one node execution.

``flows.engine.Execution`` is the mechanism (start, await, record, publish); what it should
do in each case is answered here, from values only: no I/O, no Prefect, no clock. The
canvas rules (which edges fire, what is caught, when a scope stops) are in
``flows.scheduler``; these are the engine's own rules around them:

- ``cache_key``: the key of a node execution's work (journal and Prefect's cache);
- ``restores``: restore a node execution from the journal instead of executing it;
- ``seeded``: give it the outcome the API seeded its journal with (reruns, node tests);
- ``runs_inline``: run it in the flow itself rather than as a task run;
- ``journals_durably``: write its completion before the run moves on, or buffer it;
- ``is_dead_letter``: keep its failure as a dead letter;
- ``oversize_error``: refuse an output that is too large;
- ``kept_output``: what the run result keeps of its output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from builder.plan import TOP, PlanNode, ScopeId
from flows.large_outputs import is_reference, json_size_over
from flows.scheduler import Decision, error_info
from node_handlers.base import NodeError, NodeHandler


def cache_key(node: PlanNode, config: Any, upstream: Mapping[str, Any] | None) -> str:
    """Handler type and version, resolved configuration and (for nodes that read them)
    upstream outputs: the same key means the same work. ``upstream``: None unless the
    handler ``reads_upstream`` (``node_cache_key``)."""
    body = {
        "type": node.type,
        "version": node.version,
        "config": config.model_dump(mode="json", exclude={"label", "description"}),
        "upstream": upstream,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return f"flowmaestro-{node.type}-{digest}"


def node_cache_key(node: PlanNode, handler: NodeHandler, config: Any, upstream: Mapping[str, Any]) -> str:
    """``cache_key`` of a node execution: upstream outputs count only for handlers that read them."""
    return cache_key(node, config, upstream if handler.reads_upstream else None)


SEEDED_KEY = "seeded"
"""The key of a journal entry the API seeded (a rerun's restored and pinned nodes, the
pinned and stand-in outputs of a node test, ``api.reruns``)."""


def restores(node: PlanNode, entry_status: str | None, entry_key: str | None, key: str) -> bool:
    """Whether a node execution is restored from the run's journal instead of executed: the
    node replays (``replay``, on unless a node says otherwise), and an earlier execution of
    the run completed it with the same key (a changed configuration executes it again)."""
    return node.replay and entry_status == "completed" and entry_key == key


def seeded(entry_status: str | None, entry_key: str | None) -> bool:
    """Whether a node execution takes a seeded outcome (``SEEDED_KEY``) instead of executing:
    before its templates are resolved (a rerun restores what its source completed, and
    pinned outputs, even under new inputs or another version), containers included."""
    return entry_status == "completed" and entry_key == SEEDED_KEY


def runs_inline(node: PlanNode, handler: NodeHandler, *, inline_control: bool) -> bool:
    """Whether a node runs in the flow itself instead of as a task run of the runner: its
    handler has no side effect (``inline_safe``) and nothing needs a task run (retries,
    caching, a timeout)."""
    return (
        inline_control
        and handler.inline_safe
        and node.retry.max_attempts == 1
        and not node.cache.enabled
        and node.timeout_s is None
    )


def journals_durably(handler: NodeHandler, *, inline: bool) -> bool:
    """Whether a completed node execution is written to the journal before the run moves
    on. A node with a side effect is, so it is never repeated; an inline or control node
    (no side effect) is buffered and computed again if the buffer is lost."""
    return not (inline or handler.control)


def is_dead_letter(decision: Decision) -> bool:
    """Whether a failed node execution is kept as a dead letter: nothing caught it, by the
    scheduler's one rule (an ``error`` edge that fired, its condition holding)."""
    return decision.failure is not None


def oversize_error(output: Any, max_bytes: int | None, node_id: str, attempts: int) -> dict[str, Any] | None:
    """The error of an output larger than ``max_bytes`` as JSON (refused before it is
    journaled, kept or shown); None when it fits or there is no limit."""
    over = json_size_over(output, max_bytes)
    if over is None:
        return None
    assert max_bytes is not None
    return error_info(
        NodeError(
            f"its output (over {over:,} bytes as JSON) is larger than FLOWMAESTRO_MAX_NODE_OUTPUT_BYTES "
            f"({max_bytes:,})",
            error_type="OutputTooLarge",
        ),
        node_id,
        attempts,
    )


def kept_output(scope_id: ScopeId, succeeded: bool, output: Any, shown: Any) -> Any:
    """What the run result keeps as a node execution's output. Top-level nodes only: a body
    execution's output lives in its frame while later nodes of the iteration may read it (a
    long loop stays flat). An output kept in the store (``shown`` is a reference) is
    referred to there."""
    if not succeeded or scope_id != TOP:
        return None
    return shown if is_reference(shown) else output
