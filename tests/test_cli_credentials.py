"""``flowmaestro credentials`` against a real API over HTTP (uvicorn in a thread, on SQLite,
with the session's Prefect server): values come from stdin or a prompt that does not echo
them, and no command prints one. ``flowmaestro secrets reseal`` moves every stored secret to
the first key of the ring."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import pytest
import uvicorn
from typer.testing import CliRunner

from api.app import create_app
from api.settings import ApiSettings
from cli.main import app as cli
from tests.processes import free_port

pytestmark = pytest.mark.prefect
KEY = "cli-cred-key"
OLD, NEW = "old-" + uuid.uuid4().hex, "new-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def api(prefect_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-credentials")
    database_url = f"sqlite+aiosqlite:///{home / 'api.db'}"
    settings = ApiSettings(database_url=database_url, api_keys=f"cli:{KEY}", home=home, secret_key=OLD)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", database_url, home
    server.should_exit = True
    thread.join(30)


def run(api, *args: str, stdin: str | None = None, **env: str) -> tuple[int, object, str]:
    url, database_url, home = api
    result = CliRunner().invoke(
        cli,
        list(args),
        input=stdin,
        env={
            "FLOWMAESTRO_API_URL": url,
            "FLOWMAESTRO_API_KEY": KEY,
            "FLOWMAESTRO_DATABASE_URL": database_url,
            "FLOWMAESTRO_HOME": str(home),
            "FLOWMAESTRO_SECRET_KEY": OLD,
            **env,
        },
    )
    try:
        answer = json.loads(result.stdout) if result.stdout.strip() else None
    except ValueError:
        answer = result.stdout
    return result.exit_code, answer, result.stdout + result.stderr


def test_add_list_rotate_delete_never_print_a_value(api):
    token, password, rotated, prompted = (f"{what}-{uuid.uuid4().hex}" for what in ("tok", "pw", "rot", "typed"))
    printed = []

    code, added, out = run(api, "credentials", "add", "github", "--type", "bearer", "--stdin", stdin=token + "\n")
    assert code == 0, out
    assert added["name"] == "github" and added["fields"] == ["token"]
    printed.append(out)
    code, added, out = run(
        api,
        "credentials",
        "add",
        "db",
        "--type",
        "basic",
        "--stdin",
        stdin=json.dumps({"username": "u", "password": password}),
    )
    assert code == 0 and added["fields"] == ["password", "username"], out
    printed.append(out)
    # At a prompt that does not echo: the typed value is not in the output.
    code, added, out = run(api, "credentials", "add", "openai", "--type", "api_key", stdin=prompted + "\n")
    assert code == 0 and added["fields"] == ["api_key"], out
    assert "api_key" in out  # the prompt names the field
    printed.append(out)

    code, listed, out = run(api, "credentials", "list")
    assert code == 0 and [c["name"] for c in listed] == ["db", "github", "openai"], out
    printed.append(out)
    code, answer, out = run(api, "credentials", "rotate", "github", "--stdin", stdin=rotated)
    assert code == 0 and answer["name"] == "github", out
    printed.append(out)

    code, _, out = run(api, "credentials", "add", "github", "--type", "bearer", "--stdin", stdin="x")
    assert code == 2 and "409" in out and "github" in out
    code, _, out = run(api, "credentials", "add", "misc", "--type", "custom")
    assert code == 2 and "--field" in out
    code, _, out = run(api, "credentials", "add", "pair", "--type", "basic", "--stdin", stdin="not json")
    assert code == 2 and "JSON object" in out
    code, _, out = run(api, "credentials", "add", "short", "--type", "basic", "--stdin", stdin='{"username": "u"}')
    assert code == 2 and "data.password" in out
    code, _, out = run(api, "credentials", "rotate", "nothing-here", "--stdin", stdin="x")
    assert code == 2 and "nothing-here" in out

    code, _, out = run(api, "credentials", "delete", "openai")
    assert code == 0, out
    code, listed, _ = run(api, "credentials", "list")
    assert [c["name"] for c in listed] == ["db", "github"]
    for value in (token, password, rotated, prompted):
        assert not [text for text in printed if value in text], value


def test_reseal_moves_every_secret_to_the_first_key(api):
    from store.credentials import Credentials
    from store.db import make_engine, sessions
    from store.secrets import SecretBox

    _url, database_url, home = api
    code, _, out = run(api, "credentials", "add", "resealed", "--type", "bearer", "--stdin", stdin="sealed-token")
    assert code == 0, out

    code, _, out = run(api, "secrets", "reseal", FLOWMAESTRO_SECRET_KEY=f"{NEW},{OLD}")
    assert code == 0 and "credentials under the first key" in out, out
    code, _, out = run(api, "secrets", "reseal", FLOWMAESTRO_SECRET_KEY=OLD)  # the old key alone opens none now
    assert code == 2 and "credentials row" in out and "FLOWMAESTRO_SECRET_KEY" in out, out

    async def read(secret_key: str) -> str:
        engine = make_engine(database_url)
        try:
            credentials = Credentials(sessions(engine), SecretBox.for_credentials(secret_key, home))
            found = await credentials.read("cli", "resealed")
            return found.data["token"]
        finally:
            await engine.dispose()

    assert asyncio.run(read(NEW)) == "sealed-token"
    with pytest.raises(ValueError):
        asyncio.run(read(OLD))

    code, _, out = run(api, "secrets", "worker-key", FLOWMAESTRO_SECRET_KEY=f"{NEW},{OLD}")
    ring = out.strip().split(",")
    assert code == 0 and len(ring) == 2 and NEW not in out and OLD not in out
