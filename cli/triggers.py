"""``flowmaestro schedules ...`` and ``flowmaestro webhooks ...``: clients of a running API.

They speak HTTP to the API (``--api-url`` / ``FLOWMAESTRO_API_URL``, default
http://127.0.0.1:8000) with a bearer key read from a file (``--api-key-file`` /
``FLOWMAESTRO_API_KEY_FILE``) or from ``FLOWMAESTRO_API_KEY`` — never from the command line,
where every user of the machine reads it in ``ps`` — with
httpx like the demo's client, and print the JSON answers. Exit 0 on success, 2 when the
API refused the request (4xx, its detail and issues on stderr), 1 when it could not
answer (down, 5xx).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

schedules_app = typer.Typer(
    no_args_is_help=True, help="Schedules of saved workflows (Prefect deployment schedules), through the API."
)
webhooks_app = typer.Typer(no_args_is_help=True, help="Webhooks of saved workflows, through the API.")
err = Console(stderr=True)

ApiUrl = typer.Option(
    "http://127.0.0.1:8000", "--api-url", envvar="FLOWMAESTRO_API_URL", help="The FlowMaestro API (flowmaestro serve)."
)
API_KEY_ENV = "FLOWMAESTRO_API_KEY"


def read_api_key(key_file: str | None) -> str:
    """The bearer key: the first line of ``key_file`` when given, else ``FLOWMAESTRO_API_KEY``."""
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read the key file {key_file}: {exc.strerror or exc}") from None
        if not key:
            raise typer.BadParameter(f"the key file {key_file} is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise typer.BadParameter(
            f"give --api-key-file or set {API_KEY_ENV} (a key on the command line would show in ps)",
            param_hint="'--api-key-file'",
        )
    return key


ApiKey = typer.Option(
    None,
    "--api-key-file",
    envvar="FLOWMAESTRO_API_KEY_FILE",
    callback=read_api_key,
    show_default=False,
    help="File holding a bearer key of FLOWMAESTRO_API_KEYS; FLOWMAESTRO_API_KEY when absent.",
)


def call_api(api_url: str, api_key: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    try:
        response = httpx.request(
            method, api_url.rstrip("/") + path, json=body, timeout=60, headers={"Authorization": f"Bearer {api_key}"}
        )
    except httpx.HTTPError as exc:
        err.print(f"[red]the API at {api_url} did not answer: {exc}[/red]")
        raise typer.Exit(EXIT_FAILED) from None
    if response.status_code >= 400:
        try:
            answer = response.json()
        except ValueError:
            answer = {"detail": response.text}
        err.print(f"[red]{response.status_code}: {answer.get('detail')}[/red]", highlight=False)
        for issue in answer.get("issues") or []:
            err.print(f"  {issue.get('field') or ''}: {issue.get('message')}", highlight=False)
        raise typer.Exit(EXIT_INVALID if response.status_code < 500 else EXIT_FAILED)
    return response.json() if response.content else None


def get_page(api_url: str, api_key: str, path: str) -> tuple[list[Any], str | None]:
    """A page of a list and the path of the next one (its ``Link: <...>; rel="next"``)."""
    import httpx

    try:
        response = httpx.get(api_url.rstrip("/") + path, timeout=60, headers={"Authorization": f"Bearer {api_key}"})
    except httpx.HTTPError as exc:
        err.print(f"[red]the API at {api_url} did not answer: {exc}[/red]")
        raise typer.Exit(EXIT_FAILED) from None
    if response.status_code >= 400:  # the same report as every other command's
        return call_api(api_url, api_key, "GET", path), None
    link = response.headers.get("link", "")
    following = link.split(">", 1)[0].lstrip("<") if link.endswith('rel="next"') else None
    return response.json(), following


def _print(answer: Any) -> None:
    if answer is not None:
        print(json.dumps(answer, indent=2))


def json_object(inputs_json: str | None, option: str = "--inputs-json") -> dict[str, Any] | None:
    """An option's JSON object (None when not given); anything else exits 2 naming the option."""
    if inputs_json is None:
        return None
    try:
        inputs = json.loads(inputs_json)
    except json.JSONDecodeError as exc:
        err.print(f"[red]{option} is not valid JSON: {exc.msg}[/red]")
        raise typer.Exit(EXIT_INVALID) from None
    if not isinstance(inputs, dict):
        err.print(f"[red]{option} must be a JSON object[/red]")
        raise typer.Exit(EXIT_INVALID)
    return inputs


def _timing(cron: str | None, interval: float | None, rrule: str | None, timezone: str | None) -> dict[str, Any]:
    given = {"cron": cron, "interval_s": interval, "rrule": rrule, "timezone": timezone}
    return {k: v for k, v in given.items() if v is not None}


@schedules_app.command("list")
def schedules_list(workflow_id: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """The workflow's schedules as Prefect has them, with their next runs."""
    _print(call_api(api_url, api_key, "GET", f"/api/workflows/{workflow_id}/schedules"))


@schedules_app.command("add")
def schedules_add(
    workflow_id: str,
    cron: str | None = typer.Option(None, "--cron", help="A cron expression, e.g. '0 9 * * 1-5'."),
    interval: float | None = typer.Option(None, "--interval", help="Seconds between runs (>= 10)."),
    rrule: str | None = typer.Option(None, "--rrule", help="An iCalendar RRULE."),
    timezone: str | None = typer.Option(None, "--timezone", help="IANA time zone (UTC)."),
    inputs_json: str | None = typer.Option(None, "--inputs-json", help="Inputs of its runs, a JSON object."),
    overlap: str = typer.Option("allow", "--overlap", help="allow, skip or queue."),
    paused: bool = typer.Option(False, "--paused", help="Create it inactive."),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Add a schedule: exactly one of --cron, --interval, --rrule."""
    body = {
        **_timing(cron, interval, rrule, timezone),
        "inputs": json_object(inputs_json) or {},
        "overlap": overlap,
        "active": not paused,
    }
    _print(call_api(api_url, api_key, "POST", f"/api/workflows/{workflow_id}/schedules", body))


@schedules_app.command("update")
def schedules_update(
    workflow_id: str,
    schedule_id: str,
    cron: str | None = typer.Option(None, "--cron"),
    interval: float | None = typer.Option(None, "--interval"),
    rrule: str | None = typer.Option(None, "--rrule"),
    timezone: str | None = typer.Option(None, "--timezone"),
    inputs_json: str | None = typer.Option(None, "--inputs-json"),
    overlap: str | None = typer.Option(None, "--overlap"),
    active: bool | None = typer.Option(None, "--active/--paused", help="Resume or pause it."),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Change what is given; the rest stays."""
    body: dict[str, Any] = _timing(cron, interval, rrule, timezone)
    inputs = json_object(inputs_json)
    body.update({k: v for k, v in (("inputs", inputs), ("overlap", overlap), ("active", active)) if v is not None})
    _print(call_api(api_url, api_key, "PATCH", f"/api/workflows/{workflow_id}/schedules/{schedule_id}", body))


@schedules_app.command("delete")
def schedules_delete(workflow_id: str, schedule_id: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    call_api(api_url, api_key, "DELETE", f"/api/workflows/{workflow_id}/schedules/{schedule_id}")
    err.print(f"deleted schedule {schedule_id}")


@webhooks_app.command("list")
def webhooks_list(workflow_id: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """The workflow's webhooks (never their secrets)."""
    _print(call_api(api_url, api_key, "GET", f"/api/workflows/{workflow_id}/webhooks"))


@webhooks_app.command("add")
def webhooks_add(
    workflow_id: str,
    name: str = typer.Option(..., "--name", help="What sends to it."),
    scheme: str | None = typer.Option(
        None, "--scheme", help="flowmaestro (default), github, stripe, slack or hmac (docs/triggers.md)."
    ),
    verification_json: str | None = typer.Option(
        None, "--verification-json", help='All the scheme\'s options, e.g. \'{"scheme": "hmac", "header": "X-Sig"}\'.'
    ),
    inputs_json: str | None = typer.Option(
        None, "--inputs-map-json", help='How a request becomes inputs, e.g. \'{"body": "payload"}\'.'
    ),
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """A new webhook; its secret is printed this once. A sender's own secret (Stripe's,
    Slack's) is set through the API, never on the command line."""
    body: dict[str, Any] = {"name": name}
    verification = json_object(verification_json, "--verification-json")
    if scheme is not None:
        verification = {**(verification or {}), "scheme": scheme}
    if verification is not None:
        body["verification"] = verification
    mapping = json_object(inputs_json, "--inputs-map-json")
    if mapping is not None:
        body["inputs"] = mapping
    _print(call_api(api_url, api_key, "POST", f"/api/workflows/{workflow_id}/webhooks", body))


@webhooks_app.command("rotate")
def webhooks_rotate(workflow_id: str, hook_id: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """A new secret, printed this once; the old one stops working."""
    _print(call_api(api_url, api_key, "POST", f"/api/workflows/{workflow_id}/webhooks/{hook_id}/rotate"))


@webhooks_app.command("delete")
def webhooks_delete(workflow_id: str, hook_id: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    call_api(api_url, api_key, "DELETE", f"/api/workflows/{workflow_id}/webhooks/{hook_id}")
    err.print(f"deleted webhook {hook_id}")
