"""The embedded default: a local Prefect server (SQLite) started once and reused.

``flowmaestro run`` and ``serve`` use the server at ``PREFECT_API_URL`` when it is set.
Otherwise they start ``prefect server start`` in the background, with its own
``PREFECT_HOME`` under ``FLOWMAESTRO_HOME`` (``~/.flowmaestro``), and reuse it on the next
call. Never Prefect's ephemeral mode: it starts a throwaway server per process and loses
task runs at exit.

Prefect's API has no authentication by default, and whoever reaches it can run code in
every process that reads a run's result from it (a state names a pickle to load). So the
embedded server runs with Prefect's own basic auth (``PREFECT_SERVER_API_AUTH_STRING``, a
secret generated once under the home, 0600, file ``prefect-auth``): every FlowMaestro
process that uses it gets ``PREFECT_API_AUTH_STRING`` in its environment from
``ensure_server``, and the Prefect UI asks for it once per browser. Its CORS allows only
its own origin (the UI), not every site a browser visits.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from flows.child_environment import prefect_server_environment
from flows.settings import EngineSettings
from store.secrets import private_key_file

# The server's recorder writes task-run states in batches; these keep the UI within a
# couple of seconds of a burst of task runs instead of tens of seconds.
RECORDER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}
START_TIMEOUT_S = 120
AUTH_FILE = "prefect-auth"
AUTH_USER = "flowmaestro"


class ServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerInfo:
    api_url: str
    ui_url: str
    pid: int | None
    managed: bool
    """True when FlowMaestro started it (and may stop it)."""
    auth: bool = False
    """True when it requires the auth string under the home (``auth_string``)."""
    database: str | None = None
    """``sqlite`` or ``postgresql`` for the embedded server (as it was started); None for a
    server of ``PREFECT_API_URL``, whose API does not tell its database."""


DATABASE_URL_VARIABLES = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def database_kind(env: dict[str, str]) -> str:
    """The database a Prefect server started with ``env`` uses: SQLite unless a connection
    URL (or driver) names PostgreSQL."""
    url = next((env[name] for name in DATABASE_URL_VARIABLES if env.get(name)), "")
    driver = env.get("PREFECT_SERVER_DATABASE_DRIVER") or env.get("PREFECT_API_DATABASE_DRIVER") or ""
    return "postgresql" if url.startswith("postgresql") or driver.startswith("postgresql") else "sqlite"


def embedded_database(home: Path, api_url: str | None) -> str | None:
    """The database of the embedded server when ``api_url`` is it; None otherwise (or unknown:
    a state file written before the database was recorded)."""
    try:
        state = json.loads(_state_file(home).read_text())
    except (OSError, ValueError):
        return None
    if not api_url or state.get("api_url") != api_url.rstrip("/"):
        return None
    database = state.get("database")
    return database if isinstance(database, str) else None


def _state_file(home: Path) -> Path:
    return home / "prefect-server.json"


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout)
        return response.status_code == 200
    except httpx.HTTPError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def auth_string(home: Path) -> str:
    """The embedded server's credentials (``user:password``, Prefect's auth string format):
    read from the home, generated the first time, with mode 0600 from the start. Never
    logged, printed nor passed as a parameter: processes get it in their environment."""
    return private_key_file(home / AUTH_FILE, lambda: f"{AUTH_USER}:{secrets.token_urlsafe(32)}".encode()).decode()


def ui_url_for(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


def status(home: Path | None = None) -> ServerInfo | None:
    """The server in use: ``PREFECT_API_URL``'s, or the embedded one if it is up."""
    external = os.environ.get("PREFECT_API_URL")
    if external:
        return ServerInfo(external, ui_url_for(external), None, managed=False) if healthy(external) else None
    home = home or EngineSettings().home
    state_file = _state_file(home)
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    if healthy(state["api_url"]):
        return ServerInfo(
            state["api_url"],
            ui_url_for(state["api_url"]),
            state.get("pid"),
            managed=True,
            auth=bool(state.get("auth")),
            database=state.get("database"),
        )
    return None


def ensure_server(home: Path | None = None, port: int | None = None, *, quiet: bool = False) -> ServerInfo:
    """Return the server to use, starting the embedded one if needed, and point this
    process's Prefect client at it (``PREFECT_API_URL``)."""
    home = home or EngineSettings().home
    running = status(home)
    if running is not None:
        _use(running, home)
        return running
    if os.environ.get("PREFECT_API_URL"):
        raise ServerError(
            f"PREFECT_API_URL is set to {os.environ['PREFECT_API_URL']} but no Prefect server "
            "answers there; start it, or unset PREFECT_API_URL to use the embedded server"
        )
    info = start_server(home, port or EngineSettings().server_port, quiet=quiet)
    _use(info, home)
    return info


def _use(info: ServerInfo, home: Path) -> None:
    """Point this process's Prefect client (and the processes it starts) at ``info``'s
    server, with its credentials. Before Prefect is imported: it reads them once."""
    os.environ["PREFECT_API_URL"] = info.api_url
    if info.auth:
        os.environ["PREFECT_API_AUTH_STRING"] = auth_string(home)


def start_server(
    home: Path,
    port: int,
    *,
    quiet: bool = True,
    env: dict[str, str] | None = None,
    auth: bool = True,
    args: tuple[str, ...] = (),
) -> ServerInfo:
    """Start ``prefect server start`` in the background (its own session, so it outlives
    this process) with its ``PREFECT_HOME`` under ``home``, and wait until it answers.
    ``env`` adds settings of the server, e.g. ``PREFECT_SERVER_DATABASE_CONNECTION_URL``
    for PostgreSQL; ``args`` options of ``prefect server start`` (``--workers 2``).
    ``auth``: require ``auth_string(home)`` of every request (``/health`` excepted); its
    CORS allows its own origin only either way."""
    if not _port_free(port):
        port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    prefect_home = home / "prefect"
    prefect_home.mkdir(mode=0o700, parents=True, exist_ok=True)  # its database and results: private
    origin = api_url.removesuffix("/api")
    # Not our API keys, node secrets or provider keys: the server reads none of them.
    env = dict(
        prefect_server_environment(os.environ),
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=api_url,
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_CORS_ALLOWED_ORIGINS=origin,
        **RECORDER_SETTINGS,
        **(env or {}),
    )
    if auth:  # the server's own clients (its services) present it too
        env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"] = auth_string(home)
    log_path = home / "prefect-server.log"
    if not quiet:
        print(f"Starting a local Prefect server on port {port} (the first start takes ~30 s) ...", file=sys.stderr)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"the Prefect server exited with code {process.returncode}; see {log_path}")
        if healthy(api_url, timeout=1.0):
            database = database_kind(env)
            state = {"api_url": api_url, "pid": process.pid, "auth": auth, "database": database}
            _state_file(home).write_text(json.dumps(state))
            return ServerInfo(api_url, ui_url_for(api_url), process.pid, managed=True, auth=auth, database=database)
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise ServerError(f"the Prefect server did not answer within {START_TIMEOUT_S} s; see {log_path}")


def stop(home: Path | None = None) -> bool:
    """Stop the embedded server if FlowMaestro started it."""
    home = home or EngineSettings().home
    state_file = _state_file(home)
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    state_file.unlink()
    pid = state.get("pid")
    if not pid:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True
