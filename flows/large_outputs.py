"""Node outputs too large to travel in events and run records.

An output larger than the limit (``FLOWMAESTRO_EVENT_OUTPUT_MAX_BYTES``, as JSON) is shown
as ``{"truncated": true, "bytes": n, "preview": "...", "ref": "<key>"}``: in its event, and
for a top-level node in the run result that the store and Prefect keep. The whole output
goes to FlowMaestro's store (table ``large_outputs``, by run and a random ``ref``), where
``GET /api/executions/{id}/outputs/{ref}`` reads it back as JSON. Never to Prefect's result
storage: a file there shaped like a result record (a node's output can take any shape) is
one that Prefect's ``State.result()`` unpickles for whoever points a state at it.
Templates of the run still read the whole output: it lives in the run's frames.

Without a store (a run of a canvas file, ``flowmaestro run``), or when writing fails, the
reference has no ``ref`` and the run result keeps the whole output.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger("flowmaestro.engine")

PREVIEW_CHARS = 200
REF = re.compile(r"[0-9a-f]{32}")
"""What a reference's key looks like (a uuid4's hex): nothing else is ever read."""


def is_ref(ref: str) -> bool:
    """Whether ``ref`` is what an output reference's key looks like."""
    return REF.fullmatch(ref) is not None


def is_reference(value: Any) -> bool:
    """Whether ``value`` is what ``LargeOutputs.shown`` makes of an output kept in storage."""
    return isinstance(value, dict) and value.get("truncated") is True and isinstance(value.get("ref"), str)


def _oversize_json(output: Any, limit: int | None) -> bytes | None:
    """``output`` as JSON when that is larger than ``limit`` bytes; None when it fits."""
    if limit is None or output is None or isinstance(output, (bool, int, float)):
        return None
    # JSON (ASCII) writes a character in at most 12 bytes: an astral one as two \uXXXX escapes.
    if isinstance(output, str) and len(output) * 12 + 2 <= limit:
        return None
    content = json.dumps(output, default=str).encode()  # ASCII (ensure_ascii): a byte a character
    return content if len(content) > limit else None


class LargeOutputs:
    """Shows the outputs of one run's nodes: each itself, or a reference to where it is kept."""

    def __init__(self, run_id: str, limit: int | None, keep: Callable[[str, bytes], Awaitable[None]] | None = None):
        """``keep(ref, content)`` keeps an output of this run in the store (None: there is none)."""
        self.run_id = run_id
        self.limit = limit
        self.keep = keep

    async def shown(self, output: Any) -> Any:
        """``output``, or when larger than the limit its size, a preview and (when it could
        be kept) the ``ref`` to read it whole."""
        content = _oversize_json(output, self.limit)
        if content is None:
            return output
        shown: dict[str, Any] = {"truncated": True, "bytes": len(content), "preview": content[:PREVIEW_CHARS].decode()}
        if self.keep is not None:
            ref = uuid.uuid4().hex
            try:
                await self.keep(ref, content)
            except Exception as exc:  # store down: the run goes on, the record keeps the whole
                log.warning(
                    "run %s: could not keep an output of %d bytes in the store: %s", self.run_id, len(content), exc
                )
            else:
                shown["ref"] = ref
        return shown


def json_size_over(output: Any, limit: int | None) -> int | None:
    """How many bytes of ``output``'s JSON were counted before passing ``limit`` (None: it
    fits). Counts characters of strings and keys and the digits of numbers, stopping as
    soon as the limit is passed, so measuring a huge output costs little."""
    if limit is None:
        return None
    total = 0
    stack = [output]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value) + 3
        elif isinstance(value, Mapping):
            total += 2
            for key, item in value.items():
                total += len(str(key)) + 4
                stack.append(item)
        elif isinstance(value, (list, tuple)):
            total += 2 + len(value)
            stack.extend(value)
        else:
            total += len(str(value)) + 1 if isinstance(value, (int, float)) else 5
        if total > limit:
            return total
    return None
