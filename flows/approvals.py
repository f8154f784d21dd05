"""Approval nodes pause the Prefect flow run (arrives with the approval issue)."""

from __future__ import annotations

from typing import Any

from flows.engine import NoApprovals


class PrefectApprovals(NoApprovals):
    async def wait(self, execution: Any, node: Any, frame: Any, config: Any) -> Any:
        return await super().wait(execution, node, frame, config)
