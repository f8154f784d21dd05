"""The ``flowmaestro`` command line (canvas spec, section 11).

``validate``, ``plan``, ``schema`` and ``node-types`` need no server and do not import Prefect.
``run`` uses the Prefect server at ``PREFECT_API_URL``, or starts the embedded one.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from builder.compiler import CompileResult, collector_paused, compile_canvas
from builder.inputs import checked_inputs, coerce_text
from builder.issues import InputsInvalid, Issue
from builder.limits import CompileSettings
from cli.credentials import credentials_app, secrets_app
from cli.debugging import executions_app, node_test_command
from cli.help_text import ReflowedGroup
from cli.library import export_workflows, import_workflows
from cli.pausing import add_pause_commands
from cli.triggers import ApiKey, ApiUrl, call_api, schedules_app, webhooks_app

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 4

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="FlowMaestro: run canvas workflows durably on Prefect.",
    cls=ReflowedGroup,  # help paragraphs rewrapped to the terminal, not broken where the docstring is
)
server_app = typer.Typer(no_args_is_help=True, help="The embedded local Prefect server.")
app.add_typer(server_app, name="server")
app.add_typer(schedules_app, name="schedules")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(credentials_app, name="credentials")
app.add_typer(secrets_app, name="secrets")
add_pause_commands(executions_app)
app.add_typer(executions_app, name="executions")
app.command("test-node")(node_test_command)
app.command("export")(export_workflows)
app.command("import")(import_workflows)
err = Console(stderr=True)
out = Console()


def _registry():
    from node_handlers.registry import build_registry

    return build_registry()


def _load(file: Path) -> tuple[Any, list[Issue]]:
    try:
        text = file.read_text()
    except OSError as exc:
        return None, [Issue("unreadable_file", f"cannot read {file}: {exc.strerror or exc}")]
    try:
        return json.loads(text), []
    except json.JSONDecodeError as exc:
        return None, [
            Issue("invalid_json", f"{file} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
        ]


def _print_issues(issues: list[Issue] | tuple[Issue, ...]) -> None:
    for issue in issues:
        style = "red" if issue.severity == "error" else "yellow"
        err.print(f"[{style}]{issue}[/{style}]", highlight=False, markup=True, soft_wrap=True)


def _compile(file: Path) -> tuple[Any, CompileResult | None, list[Issue]]:
    raw, issues = _load(file)
    if issues:
        return raw, None, issues
    with collector_paused():  # this process only compiles meanwhile: the collector's passes are pure cost
        result = compile_canvas(raw, _registry(), CompileSettings().compile_limits(timed=False))
    return raw, result, list(result.issues)


@app.command()
def validate(file: Path, as_json: bool = typer.Option(False, "--json", help="Print the issues as JSON.")) -> None:
    """Check a canvas; exit 0 when it compiles, 2 with every problem otherwise."""
    _, result, issues = _compile(file)
    ok = result is not None and result.ok
    if as_json:
        print(
            json.dumps(
                {
                    "valid": ok,
                    "issues": [i.to_dict() for i in issues],
                    "plan_hash": result.plan.hash if ok and result.plan else None,
                },
                indent=2,
            )
        )
    else:
        _print_issues(issues)
        if ok:
            err.print(f"[green]valid[/green]: {file}" + (f" ({len(issues)} warnings)" if issues else ""))
        else:
            errors = [i for i in issues if i.severity == "error"]
            err.print(f"[red]invalid[/red]: {len(errors)} error(s) in {file}")
    raise typer.Exit(EXIT_OK if ok else EXIT_INVALID)


@app.command()
def plan(file: Path, as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON.")) -> None:
    """Show the execution plan of a canvas: levels, containers, handles."""
    from builder.describe import describe_plan

    _, result, issues = _compile(file)
    if result is None or not result.ok or result.plan is None:
        _print_issues(issues)
        raise typer.Exit(EXIT_INVALID)
    _print_issues(issues)
    print(json.dumps(result.plan.to_dict(), indent=2, default=str) if as_json else describe_plan(result.plan))


@app.command()
def schema() -> None:
    """Print the JSON Schema of a canvas (node data schemas included)."""
    from builder.schema import canvas_json_schema

    print(json.dumps(canvas_json_schema(_registry()), indent=2))


@app.command("node-types")
def node_types(node_type: str | None = typer.Argument(None, help="One type; every type when absent.")) -> None:
    """Print the node catalog as GET /api/node-types answers it: every node type of this
    installation (plugins included) with its data schema, handles and defaults."""
    from node_handlers.catalog import NodeTypeCatalog

    catalog = NodeTypeCatalog(_registry())
    if node_type is None:
        print(json.dumps([entry.to_dict() for entry in catalog.entries()], indent=2))
        return
    entry = catalog.entry(node_type)
    if entry is None:
        known = ", ".join(e.type for e in catalog.entries())
        Console(stderr=True).print(f"unknown node type {node_type!r}; known types: {known}", markup=False)
        raise typer.Exit(EXIT_INVALID)
    print(json.dumps(entry.to_dict(), indent=2))


def _parse_inputs(inputs_json: str | None, pairs: list[str], declared: dict[str, Any]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if inputs_json:
        try:
            loaded = json.loads(inputs_json)
        except json.JSONDecodeError as exc:
            raise InputsInvalid([Issue("invalid_json", f"--inputs-json is not valid JSON: {exc.msg}")]) from exc
        if not isinstance(loaded, dict):
            raise InputsInvalid([Issue("invalid_json", "--inputs-json must be a JSON object")])
        inputs.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputsInvalid([Issue("invalid_input", f"--input {pair!r} must look like key=value")])
        type_name = declared.get(key, {}).get("type", "string")
        inputs[key] = coerce_text(value, type_name)
    return inputs


def _canvas_and_inputs(file: Path, inputs_json: str | None, pairs: list[str]) -> tuple[Any, dict[str, Any]]:
    """Compile the canvas and check the inputs; exit 2 with every problem otherwise."""
    raw, result, issues = _compile(file)
    if result is None or not result.ok or result.plan is None:
        _print_issues(issues)
        raise typer.Exit(EXIT_INVALID)
    try:
        given = _parse_inputs(inputs_json, pairs, dict(result.plan.inputs))
    except InputsInvalid as exc:
        _print_issues(list(exc.issues))
        raise typer.Exit(EXIT_INVALID) from None
    checked = checked_inputs(result.plan, given)
    if isinstance(checked, InputsInvalid):
        _print_issues(list(checked.issues))
        raise typer.Exit(EXIT_INVALID)
    return raw, given


def _prefect_server(quiet: bool = False) -> Any:
    """The Prefect server to use (the embedded one is started if needed); exit 1 if none."""
    from flows.local_server import ServerError, ensure_server

    try:
        return ensure_server(quiet=quiet)
    except ServerError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_FAILED) from None


@app.command()
def run(
    file: Path,
    inputs_json: str | None = typer.Option(None, "--inputs-json", help="Inputs as a JSON object."),
    input_pairs: list[str] = typer.Option([], "--input", help="One input as key=value (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print only the run result as JSON."),
) -> None:
    """Run a canvas on Prefect and print its result. Exit 0 completed, 1 failed,
    2 invalid canvas or inputs, 4 cancelled."""
    raw, inputs = _canvas_and_inputs(file, inputs_json, input_pairs)

    import os

    # The progress view shows node states; Prefect's per-task INFO lines would repeat them.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    server = _prefect_server(quiet=as_json)
    from cli.progress import run_with_progress

    record = asyncio.run(run_with_progress(raw, inputs, server.ui_url, quiet=as_json, console=err))
    if as_json:
        print(json.dumps(record, indent=2, default=str))
    else:
        from cli.progress import print_result

        print_result(record, server.ui_url, out)
    status = record.get("status")
    raise typer.Exit({"completed": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(status, EXIT_FAILED))


@app.command()
def demo(
    file: Path = typer.Argument(Path("examples/hello.json"), help="The canvas to run."),
    inputs_json: str | None = typer.Option(None, "--inputs-json", help="Inputs as a JSON object."),
    input_pairs: list[str] = typer.Option([], "--input", help="One input as key=value (repeatable)."),
    stop: bool = typer.Option(False, "--stop", help="Stop the demo's background worker, and run nothing."),
) -> None:
    """The whole path on the embedded default: save the canvas through the API, execute
    it, let a worker run it (started in the background on a pool of its own, reused while
    its settings are the same), print the result and the Prefect UI link. Exit 0
    completed, 1 otherwise. The demo's runs belong to the owner 'demo' (key
    demo-local-key)."""
    import os

    if stop:
        from cli.demo import stop_worker
        from deployments.settings import WorkerSettings

        out.print("stopped the demo's worker" if stop_worker(WorkerSettings().home) else "no demo worker was running")
        return
    raw, inputs = _canvas_and_inputs(file, inputs_json, input_pairs)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    server = _prefect_server()
    from cli.demo import DEMO_KEY, DEMO_OWNER, demo_pool, ensure_worker, print_result, run_demo
    from deployments.settings import WorkerSettings
    from store.db import upgrade_schema

    settings = WorkerSettings()
    asyncio.run(upgrade_schema(settings.sqlalchemy_url()))  # before the worker starts, so one process migrates
    pool = demo_pool(settings.work_pool)
    ensure_worker(settings.home, pool, err)
    result = asyncio.run(run_demo(raw, inputs, server.ui_url, err, pool=pool))
    print_result(result, server.ui_url, out)
    err.print(
        f"This run belongs to the demo's owner {DEMO_OWNER!r}: to see it on the run pages (/ui/), start "
        f"`FLOWMAESTRO_API_KEYS={DEMO_OWNER}:{DEMO_KEY} flowmaestro serve` and give the page that key.",
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_OK if result.get("status") == "completed" else EXIT_FAILED)


def _prefect_failure(exc: Exception) -> str:
    """What went wrong talking to Prefect, in a few words."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@app.command()
def resume(
    run_id: str,
    node: str = typer.Option(..., "--node", help="The approval node to answer."),
    path: str | None = typer.Option(None, "--path", help="Iteration/branch indices, e.g. 2 or 0,1."),
    input_json: str = typer.Option('{"approved": true}', "--input-json", help="The form values, with approved."),
    by: str | None = typer.Option(None, "--by", help="Who decides (recorded)."),
) -> None:
    """Answer a waiting approval: prints accepted, refused: <why>, or not waiting."""
    try:
        values = json.loads(input_json)
        indices = [int(p) for p in path.split(",")] if path else None
    except ValueError as exc:
        err.print(f"[red]refused[/red]: {exc}")
        raise typer.Exit(EXIT_INVALID) from None
    _prefect_server(quiet=True)
    import httpx

    from flows.approvals import resume_approval
    from flows.decisions import DecisionSigner
    from flows.settings import EngineSettings

    # Signed with the decision key (as the API signs): who holds it is trusted to say --by.
    settings = EngineSettings()
    signer = DecisionSigner.from_settings(settings.decision_key, settings.secret_key, settings.home)
    try:
        answer = asyncio.run(resume_approval(run_id, node, indices, values, decided_by=by, signer=signer))
    except (httpx.HTTPStatusError, httpx.TransportError) as exc:
        # Prefect failed while the answer was read or written: whether it was recorded is
        # unknown, so say so in one line (no traceback) and let the caller try again.
        err.print(
            f"[red]error[/red]: Prefect did not answer ({_prefect_failure(exc)}); the decision may "
            "not be recorded, try again",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_FAILED) from None
    label = {"accepted": "accepted", "refused": "refused", "not_waiting": "not waiting"}[answer.status]
    out.print(f"{label}: {answer.message}")
    raise typer.Exit({"accepted": EXIT_OK, "refused": EXIT_INVALID}.get(answer.status, EXIT_FAILED))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    workers: int = typer.Option(
        1,
        "--workers",
        min=0,
        help="Worker processes to start beside the API "
        "(0: the API alone; runs then wait for workers started elsewhere).",
    ),
) -> None:
    """Start the API (uvicorn) and WORKERS worker processes, with the local Prefect server
    when PREFECT_API_URL is not set. Runs execute on the workers, never in the API.
    Ctrl-C or SIGTERM stops them all cleanly."""
    import os
    import signal

    from cli.listening import PortTaken, bind

    # The port first: a taken one fails here, before any address is printed or any
    # process started.
    try:
        listener = bind(host, port)
    except PortTaken as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_FAILED) from None
    server = _prefect_server()
    if server.database == "sqlite":
        from api.health import SQLITE_WARNING

        err.print(f"[bold yellow]Warning: {SQLITE_WARNING}[/bold yellow]", highlight=False, soft_wrap=True)
    if not os.environ.get("FLOWMAESTRO_API_KEYS"):
        from cli.local_key import LOCAL_OWNER, local_api_key
        from store.settings import StoreSettings

        key, key_file, generated = local_api_key(StoreSettings().home)
        os.environ["FLOWMAESTRO_API_KEYS"] = f"{LOCAL_OWNER}:{key}"  # the worker children need not see it
        done = "generated it into" if generated else "using the one in"
        out.print(
            f"No FLOWMAESTRO_API_KEYS set; {done} {key_file} (kept across restarts):\n"
            f"  Authorization: Bearer $(cat {key_file})   or   --api-key-file {key_file}",
            soft_wrap=True,
        )
    import uvicorn

    from api.app import create_app
    from api.settings import ApiSettings
    from cli.children import Children
    from store.db import upgrade_schema

    settings = ApiSettings()
    # Migrate before any worker starts, so that no two processes migrate at once.
    asyncio.run(upgrade_schema(settings.sqlalchemy_url()))
    # Where the auth string is, never the string itself: this output ends up in logs.
    login = f"  (it asks for the auth string in {settings.home / 'prefect-auth'})" if server.auth else ""
    out.print(
        f"FlowMaestro API: http://{host}:{port}  (docs: http://{host}:{port}/docs)\n"
        f"Run pages:       http://{host}:{port}/ui/\n"
        f"Prefect UI:      {server.ui_url}{login}",
        soft_wrap=True,
    )
    # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default
    # handler that would end this process before the workers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Its workers link their runs' Prefect summaries to the run pages here.
    os.environ.setdefault("FLOWMAESTRO_PUBLIC_URL", f"http://{host}:{port}")
    # And refuse it to their http and llm nodes, whatever the public URL is (a proxy's).
    os.environ["FLOWMAESTRO_API_BIND"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # Workers check the approval decisions this API signs: they get the decision key (derived,
    # it cannot decrypt webhook secrets), explicitly, whatever else of the environment they see.
    from flows.decisions import decision_key_text

    # And the key ring of stored credentials (derived too: it opens nothing else).
    from store.secrets import credentials_key_text

    secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None
    worker_env = {
        "FLOWMAESTRO_DECISION_KEY": decision_key_text(settings.decision_key, settings.secret_key, settings.home),
        "FLOWMAESTRO_CREDENTIALS_KEY": credentials_key_text(secret_key, settings.home),
    }
    from cli.pool_settings import watching
    from deployments.settings_fingerprint import settings_fingerprint
    from flows.child_environment import worker_environment

    def say(line: str) -> None:
        out.print(line, soft_wrap=True)

    fingerprint = settings_fingerprint(worker_environment({**os.environ, **worker_env}))
    with (
        Children.workers(workers, pool=settings.work_pool, env=worker_env, log=say) as children,
        watching(settings.work_pool, fingerprint, say),
    ):
        if workers:
            out.print(
                f"Workers:         {workers} on pool {settings.work_pool!r} (pids {children.pids()}, "
                f"settings:{fingerprint})"
            )
        config = uvicorn.Config(create_app(settings), log_level="info", timeout_graceful_shutdown=10)
        uvicorn.Server(config).run(sockets=[listener])


@app.command()
def worker(
    pool: str | None = typer.Option(
        None, "--pool", help="Work pool to poll (FLOWMAESTRO_WORK_POOL, default flowmaestro); created on first use."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Runs at once (FLOWMAESTRO_WORKER_LIMIT, 20)."),
    name: str | None = typer.Option(None, "--name", help="Worker name shown in the Prefect UI."),
) -> None:
    """Run a worker until SIGTERM or SIGINT: it executes the runs of saved workflows from
    the Prefect work pool, then lets its runs in flight finish (FLOWMAESTRO_WORKER_GRACE_S)."""
    import os

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    _prefect_server(quiet=True)
    from deployments.settings import WorkerSettings
    from deployments.worker import serve_worker

    settings = WorkerSettings()
    overrides = {k: v for k, v in (("work_pool", pool), ("worker_limit", limit)) if v is not None}
    settings = settings.model_copy(update=overrides)
    asyncio.run(serve_worker(settings, name=name, started=lambda line: out.print(line)))


@server_app.command("start")
def server_start() -> None:
    """Start the embedded Prefect server (or report the one in use)."""
    info = _prefect_server()
    out.print(f"Prefect API: {info.api_url}\nPrefect UI:  {info.ui_url}")


@server_app.command("status")
def server_status() -> None:
    """Show which Prefect server runs would use."""
    from flows.local_server import status

    info = status()
    if info is None:
        out.print("no Prefect server is running (flowmaestro run will start one)")
        raise typer.Exit(EXIT_FAILED)
    owner = "embedded, started by FlowMaestro" if info.managed else "from PREFECT_API_URL"
    out.print(f"Prefect API: {info.api_url} ({owner})\nPrefect UI:  {info.ui_url}")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the embedded Prefect server, and the background worker of ``flowmaestro demo``."""
    from cli.demo import stop_worker
    from deployments.settings import WorkerSettings
    from flows.local_server import stop

    if stop_worker(WorkerSettings().home):
        out.print("stopped the background worker")
    out.print("stopped" if stop() else "no embedded server was running")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()


@app.command()
def retry(
    run_id: str,
    version: int | None = typer.Option(
        None, "--version", min=1, help="Run this version's canvas (its unchanged nodes are reused)."
    ),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Execute a failed or cancelled run again through the API: completed nodes are restored,
    the rest run. Prints the execution id and its status."""
    answer = call_api(
        api_url, api_key, "POST", f"/api/executions/{run_id}/retry", {"version": version} if version else {}
    )
    out.print(f"{answer['execution_id']}: {answer['status']} (follow: {answer['links']['self']})")
