"""Scheduled runs missed while FlowMaestro's workers were down.

Prefect's scheduler creates a schedule's runs ahead of time (at least 3, up to 100 or
100 days); nobody picks them while no worker polls, and when one comes back every one of
them is due at once. Prefect 3 has no catch-up option for that (its deployments start
all of them), so FlowMaestro's worker decides, by ``FLOWMAESTRO_SCHEDULE_CATCH_UP``:

- ``latest`` (default): of each schedule's missed runs only the latest starts: a job
  that runs every hour does not run ten times in a row after ten hours down;
- ``none``: missed runs do not start; the schedule goes on from its next time;
- ``all``: every missed run starts (Prefect's own behaviour).

A run is *missed* when the worker sees it more than ``schedule_late_after_s`` after its
scheduled time; the ones that do not start end Cancelled, with a message saying why.
Runs started by hand (API, webhook, UI) are never missed: only schedule-created ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from flows.prefect_compat import schedule_id_of

CATCH_UP_POLICIES = ("none", "latest", "all")


def schedule_of(flow_run: Any) -> str | None:
    """The deployment schedule that created a run, or None for a run started otherwise."""
    return schedule_id_of(flow_run)


def scheduled_time(flow_run: Any) -> datetime | None:
    state = flow_run.state
    details = getattr(state, "state_details", None) if state is not None else None
    return getattr(details, "scheduled_time", None) or flow_run.expected_start_time


def missed_to_skip(flow_runs: Sequence[Any], now: datetime, policy: str, late_after: timedelta) -> list[Any]:
    """The runs of ``flow_runs`` (due now) that must not start under ``policy``."""
    if policy == "all":
        return []
    missed: dict[str, list[Any]] = {}
    for flow_run in flow_runs:
        if getattr(flow_run, "run_count", 0):  # it started already (a delay let go of it): no missed start
            continue
        schedule, when = schedule_of(flow_run), scheduled_time(flow_run)
        if schedule is not None and when is not None and now - when > late_after:
            missed.setdefault(schedule, []).append(flow_run)
    skipped = []
    for runs in missed.values():
        runs.sort(key=lambda run: scheduled_time(run) or now)  # every one has its time (above)
        skipped += runs if policy == "none" else runs[:-1]
    return skipped
