"""Compiled plans of saved workflow versions, kept by ``(workflow_id, version)``.

Saved versions are immutable, so a process compiles each one once: the API (execute,
webhooks, schedules, retries) and a worker (every run of the version) read the plan here.
"""

from __future__ import annotations

from collections import OrderedDict

from builder.plan import Plan


class PlanCache:
    """Plans by ``(workflow_id, version)``, least recently used dropped first once the
    plans held have more than ``max_nodes`` nodes in all (a plan is counted as at least 1)."""

    def __init__(self, max_nodes: int):
        self.max_nodes = max_nodes
        self._plans: OrderedDict[tuple[str, int], Plan] = OrderedDict()
        self._nodes = 0

    def get(self, key: tuple[str, int]) -> Plan | None:
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
        return plan

    def put(self, key: tuple[str, int], plan: Plan) -> None:
        if key in self._plans:
            return
        self._plans[key] = plan
        self._nodes += _weight(plan)
        while self._nodes > self.max_nodes and len(self._plans) > 1:
            _, dropped = self._plans.popitem(last=False)
            self._nodes -= _weight(dropped)

    def __len__(self) -> int:
        return len(self._plans)


def _weight(plan: Plan) -> int:
    return max(1, len(plan.nodes))
