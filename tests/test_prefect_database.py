"""Which database the Prefect server runs on, said loudly when it is SQLite (issue 31, major 5):
the embedded server records it when it starts; ``/health`` reads it (test_api.py checks the
route) and ``serve`` prints the same warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.health import SQLITE_WARNING, prefect_database
from flows.local_server import database_kind, embedded_database

API_URL = "http://127.0.0.1:4299/api"


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({}, "sqlite"),
        ({"PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////tmp/p.db"}, "sqlite"),
        ({"PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://u@h/prefect"}, "postgresql"),
        ({"PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://u@h/prefect"}, "postgresql"),
        ({"PREFECT_SERVER_DATABASE_DRIVER": "postgresql+asyncpg", "PREFECT_SERVER_DATABASE_HOST": "h"}, "postgresql"),
    ],
)
def test_the_database_a_server_starts_on(env: dict[str, str], kind: str) -> None:
    assert database_kind(env) == kind


def state(home: Path, **fields: object) -> None:
    (home / "prefect-server.json").write_text(json.dumps({"api_url": API_URL, "pid": 1, "auth": True, **fields}))


def test_the_embedded_servers_database_is_known_for_its_url_only(tmp_path: Path) -> None:
    assert embedded_database(tmp_path, API_URL) is None  # no embedded server here
    state(tmp_path, database="sqlite")
    assert embedded_database(tmp_path, API_URL) == "sqlite"
    assert embedded_database(tmp_path, API_URL + "/") == "sqlite"
    assert embedded_database(tmp_path, "http://prefect.internal:4200/api") is None  # PREFECT_API_URL elsewhere
    assert embedded_database(tmp_path, None) is None
    state(tmp_path)  # written before the database was recorded
    assert embedded_database(tmp_path, API_URL) is None


def test_health_says_loudly_when_prefect_runs_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", API_URL)
    state(tmp_path, database="sqlite")
    assert prefect_database(tmp_path) == {"prefect_database": "sqlite", "warnings": [SQLITE_WARNING]}
    assert "SQLite" in SQLITE_WARNING and "PostgreSQL" in SQLITE_WARNING
    state(tmp_path, database="postgresql")
    assert prefect_database(tmp_path) == {"prefect_database": "postgresql"}
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")
    assert prefect_database(tmp_path) == {"prefect_database": "unknown"}
