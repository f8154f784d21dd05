"""``flowmaestro executions nodes|rerun`` and ``flowmaestro test-node``: the debugging loop
through a running API (``docs/debugging.md``), as ``cli.triggers`` talks to it: the key from
a file or ``FLOWMAESTRO_API_KEY``, JSON answers on stdout, exit 2 for a refused request
(4xx, its issues on stderr), 1 when the API could not answer."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import typer

from cli.triggers import EXIT_FAILED, ApiKey, ApiUrl, call_api, err, get_page, json_object

executions_app = typer.Typer(no_args_is_help=True, help="Runs: their node executions, reruns, through the API.")


@executions_app.command("nodes")
def executions_nodes(
    execution_id: str,
    node_id: str | None = typer.Option(None, "--node", help="Only this node's executions (every path)."),
    status: str | None = typer.Option(None, "--status", help="Only those that ended so: completed, cached, failed."),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Executions per page."),
    every: bool = typer.Option(False, "--all", help="Follow the pages to the last one."),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Every node execution of a run in start order (body nodes with their path): its input
    (secrets redacted), output, error, attempts, timings, restored flag and log lines. Prints
    a JSON list; without --all, one page, and the command for the next one on stderr."""
    query = {k: v for k, v in {"node_id": node_id, "status": status, "limit": str(limit)}.items() if v}
    path: str | None = f"/api/executions/{execution_id}/nodes?{urlencode(query)}"
    found: list[Any] = []
    while path is not None:
        page, path = get_page(api_url, api_key, path)
        found += page
        if not every:
            break
    print(json.dumps(found, indent=2))
    if path is not None:
        err.print(f"more: flowmaestro executions nodes {execution_id} --all (or GET {path})", highlight=False)


@executions_app.command("rerun")
def executions_rerun(
    execution_id: str,
    from_node: str = typer.Option(..., "--from", help="This node and everything downstream of it execute again."),
    pinned_json: str | None = typer.Option(
        None, "--pinned-json", help='Outputs to take instead of executing, e.g. \'{"fetch": {"status": 200}}\'.'
    ),
    inputs_json: str | None = typer.Option(None, "--inputs-json", help="Inputs replacing the source run's."),
    version: int | None = typer.Option(None, "--version", min=1, help="Run this version (the source's by default)."),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """A new run of an ended run from a node: what completed upstream is restored, nothing
    paid again. Prints the new execution id and its status."""
    body: dict[str, Any] = {"from_node": from_node}
    pinned = json_object(pinned_json, "--pinned-json")
    inputs = json_object(inputs_json, "--inputs-json")
    if pinned is not None:
        body["pinned"] = pinned
    if inputs is not None:
        body["inputs"] = inputs
    if version is not None:
        body["version"] = version
    answer = call_api(api_url, api_key, "POST", f"/api/executions/{execution_id}/rerun", body)
    print(json.dumps({"execution_id": answer["execution_id"], "status": answer["status"]}, indent=2))


def node_test_command(
    workflow_id: str,
    node_id: str,
    inputs_json: str | None = typer.Option(None, "--inputs-json", help="The run's inputs, a JSON object."),
    pinned_json: str | None = typer.Option(
        None, "--pinned-json", help="Outputs of upstream nodes the node's templates read, a JSON object by node id."
    ),
    version: int | None = typer.Option(None, "--version", min=1, help="The version to test (the latest by default)."),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Run one node of a saved workflow on a worker, nothing else executing: prints its
    status, output, error, duration and logs (or, past 60 s, the run to follow). Exit 1 when
    the node failed."""
    body: dict[str, Any] = {}
    for key, text, option in (("inputs", inputs_json, "--inputs-json"), ("pinned", pinned_json, "--pinned-json")):
        value = json_object(text, option)
        if value is not None:
            body[key] = value
    if version is not None:
        body["version"] = version
    answer = call_api(api_url, api_key, "POST", f"/api/workflows/{workflow_id}/nodes/{node_id}/test", body)
    print(json.dumps(answer, indent=2))
    if answer.get("status") == "failed":
        raise typer.Exit(EXIT_FAILED)
