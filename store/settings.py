"""Where FlowMaestro keeps local state and its database: the settings every process shares.

Each package has its settings class for its own fields (``ApiSettings``, ``EngineSettings``,
``EventLogSettings``, ``WorkerSettings``, ``HandlerSettings``); the ones that need the home or
the database extend ``StoreSettings``, so those are defined once. All read ``FLOWMAESTRO_*``
environment variables, are built once per process by its entry point and injected.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.home() / ".flowmaestro"


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWMAESTRO_", extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="Where local state lives: the default SQLite database, the embedded Prefect server's files.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL of FlowMaestro's database "
        "(workflows, executions; run events without Redis); SQLite under home by "
        "default, e.g. postgresql+asyncpg://user@host/db in production.",
    )

    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home / 'flowmaestro.db'}"
