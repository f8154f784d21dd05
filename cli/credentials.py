"""``flowmaestro credentials ...`` (over the API) and ``flowmaestro secrets reseal`` (on the
database, for the operator).

Values never come from the command line, where every user of the machine reads them in
``ps``: they are asked for at a prompt that does not echo them, or read from stdin
(``--stdin``: a JSON object of the fields, or, for a type of one field, the value itself).
No command prints a value: the API never answers one.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import typer

from cli.triggers import EXIT_INVALID, ApiKey, ApiUrl, call_api, err
from store.credentials import FIELDS_OF_TYPE

credentials_app = typer.Typer(
    no_args_is_help=True, help="Credentials of your nodes (API keys, tokens...), through the API; values write-only."
)
secrets_app = typer.Typer(no_args_is_help=True, help="The operator's encryption keys of stored secrets.")

TYPES = ("api_key", "bearer", "basic", "header", "custom")
FROM_STDIN = typer.Option(
    False, "--stdin", help="Read the values from stdin: a JSON object, or the value of a one-field type."
)
FIELD_NAMES = typer.Option(
    None, "--field", help="A field of a custom credential to ask for (repeat for more); with --stdin, unused."
)


def read_values(credential_type: str, from_stdin: bool, custom_fields: list[str] | None) -> dict[str, Any]:
    """The credential's fields, from stdin or from prompts that do not echo."""
    fields = FIELDS_OF_TYPE.get(credential_type) or tuple(custom_fields or ())
    if from_stdin:
        text = sys.stdin.read()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
        if len(fields) == 1:
            return {fields[0]: text.strip()}
        err.print(f"[red]stdin: give a JSON object of the fields ({', '.join(fields) or 'any names'})[/red]")
        raise typer.Exit(EXIT_INVALID)
    if not fields:
        err.print("[red]a custom credential: name its fields with --field (or give them with --stdin)[/red]")
        raise typer.Exit(EXIT_INVALID)
    return {name: typer.prompt(name, hide_input=True, err=True) for name in fields}  # stdout stays JSON


def _print(answer: Any) -> None:
    if answer is not None:
        print(json.dumps(answer, indent=2))


def _id_of(api_url: str, api_key: str, name: str) -> str:
    """The id of the credential named ``name`` (commands take names, the API ids)."""
    for credential in call_api(api_url, api_key, "GET", "/api/credentials"):
        if credential["name"] == name:
            return str(credential["id"])
    err.print(f"[red]no credential named {name!r}[/red]")
    raise typer.Exit(EXIT_INVALID)


@credentials_app.command("add")
def credentials_add(
    name: str,
    credential_type: str = typer.Option(..., "--type", help=f"One of {', '.join(TYPES)}."),
    description: str = typer.Option("", "--description"),
    fields: list[str] | None = FIELD_NAMES,
    from_stdin: bool = FROM_STDIN,
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """Store a credential; nodes name it in data.credential."""
    data = read_values(credential_type, from_stdin, fields)
    body = {"name": name, "type": credential_type, "data": data, "description": description}
    _print(call_api(api_url, api_key, "POST", "/api/credentials", body))


@credentials_app.command("list")
def credentials_list(api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """Your credentials: names, types, fields, when last used (never values)."""
    _print(call_api(api_url, api_key, "GET", "/api/credentials"))


@credentials_app.command("rotate")
def credentials_rotate(
    name: str,
    fields: list[str] | None = FIELD_NAMES,
    from_stdin: bool = FROM_STDIN,
    api_url: str = ApiUrl,
    api_key: str = ApiKey,
) -> None:
    """New values for every field: the next node execution uses them."""
    credential_id = _id_of(api_url, api_key, name)
    current = call_api(api_url, api_key, "GET", f"/api/credentials/{credential_id}")
    data = read_values(current["type"], from_stdin, fields or current["fields"])
    _print(call_api(api_url, api_key, "PUT", f"/api/credentials/{credential_id}", {"data": data}))


@credentials_app.command("delete")
def credentials_delete(name: str, api_url: str = ApiUrl, api_key: str = ApiKey) -> None:
    """Delete it: nodes naming it fail from their next execution on."""
    call_api(api_url, api_key, "DELETE", f"/api/credentials/{_id_of(api_url, api_key, name)}")


@secrets_app.command("worker-key")
def secrets_worker_key() -> None:
    """Print FLOWMAESTRO_CREDENTIALS_KEY for workers started apart from 'flowmaestro serve':
    derived from FLOWMAESTRO_SECRET_KEY, it opens stored credentials and nothing else."""
    from api.settings import ApiSettings
    from store.secrets import credentials_key_text

    settings = ApiSettings()
    print(credentials_key_text(settings.secret_key.get_secret_value() if settings.secret_key else None, settings.home))


@secrets_app.command("reseal")
def secrets_reseal() -> None:
    """Encrypt every stored secret (webhook secrets, credentials) again under the first key of
    FLOWMAESTRO_SECRET_KEY; afterwards the ring's other keys can be dropped (docs/credentials.md)."""
    from api.settings import ApiSettings
    from store.credentials import reseal_all
    from store.db import make_engine, sessions, upgrade_schema
    from store.secrets import SecretBox

    settings = ApiSettings()
    secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None

    async def reseal() -> None:
        url = settings.sqlalchemy_url()
        await upgrade_schema(url)
        engine = make_engine(url)
        try:
            counts = await reseal_all(
                sessions(engine),
                SecretBox.from_settings(secret_key, settings.home),
                SecretBox.for_credentials(secret_key, settings.home),
            )
        finally:
            await engine.dispose()
        print(f"re-sealed {counts.webhooks} webhook secrets and {counts.credentials} credentials under the first key")

    try:
        asyncio.run(reseal())
    except ValueError as exc:
        err.print(f"[red]{exc}: add the key that sealed it to FLOWMAESTRO_SECRET_KEY[/red]", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
