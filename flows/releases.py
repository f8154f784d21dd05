"""Letting go of a run while a delay waits long: its worker slot is freed until the delay ends.

A ``delay`` node whose remaining wait is longer than ``FLOWMAESTRO_DELAY_RELEASE_S`` (and
than the workers' prefetch: a run they take early must not be let go of again) in a run of
a deployment, with no other node of the run executing, calls ``DelayRelease``: the run is
suspended and scheduled again for ``WAKE_EARLY_S`` before the delay's end
(``prefect_compat.release_flow_run``, the same release as an approval's), any worker takes it
then, and the run replays from its journal, where the delay keeps its first start: it waits
only what is left, and ends on time.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import get_client

from flows import prefect_compat
from flows.approvals import WAKE_EARLY_S, approval_slug

log = logging.getLogger("flowmaestro.releases")


def delay_pause_key(node_id: str, path: tuple[int, ...]) -> str:
    """The pause key a delay's release starts from: an approval's key scheme behind
    ``prefect_compat.DELAY_RELEASE``."""
    return prefect_compat.DELAY_RELEASE + approval_slug(node_id, path)


@dataclass(frozen=True)
class DelayRelease:
    """The ``Execution.release`` of a run of a deployment."""

    run_id: uuid.UUID
    after_s: float
    """Only waits longer than this are let go of."""
    holding: Callable[[bool], None] = field(default=lambda held: None)
    """Tells the worker the run lets go of it (``prefect_compat.release_flow_run``)."""

    async def __call__(self, node_id: str, path: tuple[int, ...], until: datetime) -> None:
        left = (until - datetime.now(UTC)).total_seconds()
        if left <= self.after_s or left <= WAKE_EARLY_S + 1:
            return
        ends = until
        # Woken early: the replay's cost is paid before the end, the rest is waited in the
        # process (the delay waits only what is left), so it ends on time.
        until = until - timedelta(seconds=WAKE_EARLY_S)
        async with get_client() as client:
            key = await prefect_compat.fresh_pause_key(client, self.run_id, delay_pause_key(node_id, path))
            log.info(
                "run %s: releasing it while delay %s waits %.0f s (until %s)",
                self.run_id,
                node_id,
                left,
                ends.isoformat(),
            )
            await prefect_compat.release_flow_run(client, self.run_id, key, until=until, holding=self.holding)
