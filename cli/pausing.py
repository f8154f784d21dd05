"""``flowmaestro executions pause|resume``: pause a live run at its next node boundary, and
continue it (a person's pause or a breakpoint), through the API."""

from __future__ import annotations

import typer
from rich.console import Console

from cli.triggers import ApiKey, ApiUrl, call_api

out = Console()


def executions_pause(execution_id: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """Pause a run: no new node starts, the running ones finish, then it waits for a resume."""
    answer = call_api(api_url, api_key, "POST", f"/api/executions/{execution_id}/pause")
    out.print(f"{execution_id}: {answer['status']} ({answer['message']})", highlight=False)


def executions_resume(execution_id: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """Continue a run paused by a person or a breakpoint (approvals: flowmaestro resume)."""
    answer = call_api(api_url, api_key, "POST", f"/api/executions/{execution_id}/resume", {})
    out.print(f"{execution_id}: {answer['status']} ({answer['message']})", highlight=False)


def add_pause_commands(executions_app: typer.Typer) -> None:
    """Add ``pause`` and ``resume`` to the ``executions`` command group."""
    executions_app.command("pause")(executions_pause)
    executions_app.command("resume")(executions_resume)
