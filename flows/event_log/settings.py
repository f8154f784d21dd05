"""Which event log a process uses: ``EventLogSettings`` and the factories that build the log."""

from __future__ import annotations

from pydantic import Field

from flows.event_log.base import EventLog
from flows.event_log.redis_streams import RedisEventLog
from flows.event_log.sql import SqlEventLog
from store.settings import StoreSettings


class EventLogSettings(StoreSettings):
    """The events of a run live in Redis when ``redis_url`` is set, else in the database."""

    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:6379/0); when set, run events "
        "are kept in Redis streams instead of the database.",
    )
    event_retention_days: float = Field(
        7.0,
        gt=0,
        description="How long the events of a run are kept after "
        "its last event (days), whether the run ended or not: in the "
        "database, runs whose last event is older are purged now and then; "
        "in Redis, this is the TTL of the run's stream, set again on every "
        "append, so the stream of a run that never wrote its final event "
        "(its process died) expires too.",
    )


def event_log_from_settings(settings: EventLogSettings) -> EventLog:
    """``RedisEventLog`` when ``settings.redis_url`` is set, else ``SqlEventLog`` on
    ``settings.sqlalchemy_url()``; either keeps events ``settings.event_retention_days``."""
    if settings.redis_url:
        return RedisEventLog(settings.redis_url, retention_days=settings.event_retention_days)
    return SqlEventLog(settings.sqlalchemy_url(), retention_days=settings.event_retention_days)


def event_log_from_env() -> EventLog:
    """The event log the ``FLOWMAESTRO_*`` environment configures: ``FLOWMAESTRO_REDIS_URL``,
    else ``FLOWMAESTRO_DATABASE_URL`` (SQLite under ``FLOWMAESTRO_HOME`` by default), events kept
    ``FLOWMAESTRO_EVENT_RETENTION_DAYS`` (7) days after their run's last event."""
    return event_log_from_settings(EventLogSettings())
