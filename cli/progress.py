"""The CLI's view of a run: live node states while it runs, then the result."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from flows.events import EventBus, RunEvent
from store.vocabulary import FINAL_EVENT_TYPES, NODE_STATUS_OF_EVENT, EventType

STYLES = {
    "running": "cyan",
    "completed": "green",
    "cached": "blue",
    "failed": "red",
    "skipped": "dim",
    "paused": "yellow",
    "cancelled": "magenta",
    "retrying": "yellow",
}
# A node between two attempts is running; the progress view shows it as a state of its own.
NODE_EVENTS: dict[str, str] = {event: status for event, status in NODE_STATUS_OF_EVENT.items()}
NODE_EVENTS[EventType.NODE_RETRYING] = "retrying"


def run_link(ui_url: str, run_id: str) -> str:
    return f"{ui_url}/runs/flow-run/{run_id}"


class ProgressView:
    """A table of top-level node states on a terminal; one line per event elsewhere."""

    def __init__(self, console: Console, ui_url: str):
        self.console = console
        self.ui_url = ui_url
        self.states: dict[str, str] = {}
        self.body_runs = 0
        self.live: Live | None = None

    def attach(self, bus: EventBus) -> None:
        bus.subscribe(self.on_event)

    def _table(self) -> Table:
        table = Table(show_header=True, header_style="bold", box=None)
        table.add_column("node")
        table.add_column("state")
        for node_id, state in self.states.items():
            table.add_row(node_id, f"[{STYLES.get(state, '')}]{state}[/]")
        if self.body_runs:
            table.add_row("[dim](inside containers)[/]", f"[dim]{self.body_runs} node runs[/]")
        return table

    def on_event(self, event: RunEvent) -> None:
        if event.type == "execution:started":
            self.console.print(
                f"run {event.execution_id} started: {run_link(self.ui_url, event.execution_id)}", soft_wrap=True
            )
            if self.console.is_terminal:
                self.live = Live(self._table(), console=self.console, refresh_per_second=8, transient=False)
                self.live.start()
            return
        if event.type == "node:paused":
            where = f" --path {','.join(map(str, event.path))}" if event.path else ""
            self.console.print(
                f"[yellow]waiting for approval[/] of {event.node_id}{where}: {event.data.get('message') or ''}\n"
                f"  resume in the Prefect UI: {run_link(self.ui_url, event.execution_id)}\n"
                f"  or: flowmaestro resume {event.execution_id} --node {event.node_id}{where} "
                "--input-json '{\"approved\": true}'\n"
                f"  or: POST /api/executions/{event.execution_id}/resume "
                f'{{"node_id": "{event.node_id}", "input": {{"approved": true}}}}',
                soft_wrap=True,
            )
            return
        if event.type in FINAL_EVENT_TYPES:
            if self.live is not None:
                self.live.update(self._table())
                self.live.stop()
            return
        state = NODE_EVENTS.get(event.type)
        if state is None or event.node_id is None:
            return
        if event.path:
            if event.type == "node:started":
                self.body_runs += 1
            return
        self.states[event.node_id] = state
        if self.live is not None:
            self.live.update(self._table())
        else:
            detail = (
                f": {event.data['error']['message']}"
                if state in ("failed", "retrying") and event.data.get("error")
                else ""
            )
            self.console.print(f"  {event.node_id}: [{STYLES.get(state, '')}]{state}[/]{detail}", highlight=False)


async def run_with_progress(
    canvas: Any, inputs: dict[str, Any], ui_url: str, *, quiet: bool, console: Console
) -> dict[str, Any]:
    from flows.flow import workflow_flow
    from flows.prefect_compat import UntrustedResult, run_result
    from flows.run_context import RunContext

    view = ProgressView(console, ui_url)
    context = RunContext.from_environment(listeners=() if quiet else (view.attach,))
    try:
        state = await workflow_flow(context)(canvas=canvas, inputs=inputs, return_state=True)
    finally:
        await context.close()
    try:
        result: Any = await run_result(state)  # the run's, in memory: never a pickle Prefect names
    except UntrustedResult as exc:
        result = f"its result was refused ({exc})"
    if isinstance(result, dict):
        return result
    run_id = str(state.state_details.flow_run_id)
    status = "cancelled" if state.is_cancelled() else "failed"
    return {
        "id": run_id,
        "status": status,
        "output": None,
        "error": {"message": state.message or str(result)},
        "nodes": {},
        "trace": [],
    }


def print_result(result: dict[str, Any], ui_url: str, console: Console) -> None:
    status = result.get("status", "failed")
    console.print(f"[bold]{result.get('workflow', 'workflow')}[/]: [{STYLES.get(status, '')}]{status}[/]")
    if result.get("error"):
        console.print(f"[red]error[/]: {result['error'].get('message')}")
    if status == "completed":
        console.print("output:")
        console.print_json(json.dumps(result.get("output"), default=str))
    if result.get("id"):
        console.print(f"Prefect UI: {run_link(ui_url, result['id'])}", soft_wrap=True)
