"""``flowmaestro export`` and ``flowmaestro import``: all of an owner's workflows as one
bundle, through a running API (the key as ``flowmaestro schedules`` takes it).

``export`` reads every workflow of the key's owner (``GET /api/workflows``) and each one's
bundle (``GET /api/workflows/{id}/export``: every version, schedules, webhooks without
secrets) and writes them as one bundle. ``import`` posts a bundle to
``POST /api/workflows/import``: all its workflows are created in one transaction, their
sub-workflow references rewritten to the new ids, or none is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from cli.triggers import EXIT_INVALID, ApiKey, ApiUrl, call_api, get_page

err = Console(stderr=True)


def export_workflows(
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the bundle here; stdout when absent."),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Export every workflow of the key's owner as one bundle (JSON)."""
    listed, following = get_page(api_url, api_key, "/api/workflows?limit=500")
    while following is not None:  # every page of the list
        more, following = get_page(api_url, api_key, following)
        listed += more
    workflows: list[dict[str, Any]] = []
    exported_at = None
    for summary in listed:
        bundle = call_api(api_url, api_key, "GET", f"/api/workflows/{summary['id']}/export")
        workflows += bundle["workflows"]
        exported_at = exported_at or bundle.get("exported_at")
    if not workflows:
        err.print("[red]the owner has no workflow to export[/red]")
        raise typer.Exit(EXIT_INVALID)
    text = json.dumps(
        {"format": "flowmaestro-bundle", "format_version": 1, "exported_at": exported_at, "workflows": workflows},
        indent=2,
    )
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        out.write_text(text + "\n")
        err.print(f"{len(workflows)} workflow(s) written to {out}")


def import_workflows(
    bundle_file: Path = typer.Argument(..., help="A bundle written by flowmaestro export (or one workflow's export)."),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Import a bundle: every workflow in it, or none. Prints the new ids (and the new
    webhook secrets, shown once)."""
    try:
        bundle = json.loads(bundle_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        err.print(f"[red]cannot read the bundle {bundle_file}: {exc}[/red]")
        raise typer.Exit(EXIT_INVALID) from None
    answer = call_api(api_url, api_key, "POST", "/api/workflows/import", bundle)
    print(json.dumps(answer, indent=2))
