"""Every compile the API does, in one place: off the event loop, within limits, cached.

A canvas is untrusted input, and compiling one is CPU work in Python: done in the event
loop, one large canvas froze every other request of the process (/health answered after
55 s). Here each compile runs in a worker thread, so the loop keeps serving others (a
thread holds the GIL in slices of 5 ms at most; a process pool would isolate better but
could not hand back a ``Plan``, whose read-only mappings do not pickle, and would copy
megabytes of canvas each way). A thread cannot be stopped from outside: the compiler
checks its own time budget between stages and in its long loops (``builder.limits``),
and the size caps bound what it can be asked to do.

Saved versions are immutable, so the plan of ``(workflow_id, version)`` is compiled once
per process: execute, webhook deliveries, schedule changes and retries read it from a
small LRU cache bounded by the nodes its plans hold. ``checked_inputs`` is the one way the
API checks a run's inputs: the plan of the version they are for, and 422 naming each input
that does not fit it (execute, webhooks, schedules, retries).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import Counter

from api.errors import ApiError
from builder.catalog import NodeCatalog
from builder.compiler import CompileResult, compile_canvas
from builder.inputs import checked_inputs
from builder.issues import InputsInvalid
from builder.limits import LIMIT_CODES, CompileLimits
from builder.plan import Plan
from builder.plan_cache import PlanCache
from store.errors import Invalid
from store.queries import SavedVersion


class CanvasCompiler:
    """Compiles canvases for the API's routes and services (injected; one per app)."""

    def __init__(
        self,
        catalog: NodeCatalog,
        limits: CompileLimits,
        cache: PlanCache,
        counter: Counter | None = None,
        threads: int = 2,
    ):
        """``counter``: counts every compile (``flowmaestro_canvas_compiles_total``).
        ``threads``: compiles at once. Their own pool, not asyncio's default one, which also
        resolves names for new database and Redis connections: a burst of large compiles
        must not hold those up. Close with ``close()``."""
        self.catalog, self.limits, self.cache, self.counter = catalog, limits, cache, counter
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="compile")

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def compile(self, canvas: Any) -> CompileResult:
        """Every issue of ``canvas`` and its plan when valid; 413 naming the cap when it is
        too large to compile here (too many nodes or edges, or over the time budget)."""
        if self.counter is not None:
            self.counter.inc()
        result = await asyncio.get_running_loop().run_in_executor(
            self._threads, compile_canvas, canvas, self.catalog, self.limits
        )
        over = [issue.to_dict() for issue in result.issues if issue.code in LIMIT_CODES]
        if over:
            raise ApiError(413, "canvas too large to compile: " + "; ".join(i["message"] for i in over), over)
        return result

    async def valid(self, canvas: Any) -> CompileResult:
        """``compile``, with 422 and every issue when the canvas has errors."""
        result = await self.compile(canvas)
        if not result.ok:
            raise Invalid(f"invalid canvas: {len(result.errors)} error(s)", [i.to_dict() for i in result.issues])
        return result

    def remember(self, saved: SavedVersion, plan: Plan) -> None:
        """The plan a version was just saved with: its first run does not compile it again."""
        self.cache.put((saved.workflow_id, saved.version), plan)

    async def plan_of(self, saved: SavedVersion) -> Plan:
        """The plan of a saved version, compiled at most once per process."""
        key = (saved.workflow_id, saved.version)
        plan = self.cache.get(key)
        if plan is not None:
            return plan
        try:
            result = await self.compile(saved.canvas)
        except ApiError as exc:  # saved under larger caps than this process has now
            raise Invalid(f"this workflow version no longer compiles here: {exc.detail}", exc.issues) from None
        if result.plan is None:  # saved canvases compiled when saved; a registry change could break one
            raise Invalid(
                "this workflow version no longer compiles; save a new version", [i.to_dict() for i in result.errors]
            )
        self.cache.put(key, result.plan)
        return result.plan

    async def checked_inputs(
        self, saved: SavedVersion, inputs: Any, *, refused: str = ""
    ) -> tuple[Plan, dict[str, Any]]:
        """The plan of ``saved`` and ``inputs`` resolved against its declared inputs (defaults
        filled in); 422 naming every input that does not fit, its message led by ``refused``
        when given (e.g. "the run's inputs do not fit version 2")."""
        plan = await self.plan_of(saved)
        checked = checked_inputs(plan, inputs)
        if isinstance(checked, InputsInvalid):
            message = f"{refused}: {checked}" if refused else str(checked)
            raise Invalid(message, [i.to_dict() for i in checked.issues]) from checked
        return plan, checked
